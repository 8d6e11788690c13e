//! A logged-in session: navigation and file management. Transfers and exec
//! are in their own modules.

use ferry_proto::msg::parse_response;
use ferry_proto::{Connection, Entry, FrameCodec, HashAlgo, Header, Request};
use tokio::io::{ReadHalf, WriteHalf};

use crate::connect::ClientStream;
use crate::{ClientError, Remote};

pub struct Session {
    pub(crate) rd: Connection<ReadHalf<ClientStream>>,
    pub(crate) wr: Connection<WriteHalf<ClientStream>>,
    pub(crate) next_id: u64,
    remote: Remote,
    pub fingerprint: Option<String>,
    /// The file hash negotiated at hello: transfers are verified with it.
    hash: HashAlgo,
}

/// Usage and quota as `ferry df` shows them.
/// What `df` answers.
pub type DfInfo = ferry_proto::resp::DfAnswer;
use ferry_proto::resp::{HashAnswer, LsPage, PathAnswer, StatAnswer};

impl Session {
    pub(crate) fn new(
        conn: Connection<ClientStream>,
        remote: Remote,
        fingerprint: Option<String>,
        hash: HashAlgo,
    ) -> Self {
        // The server says nothing unasked after login, so no input is lost by
        // dropping the (empty) read buffer here.
        let (r, w) = tokio::io::split(conn.into_inner());
        Session {
            rd: Connection::new(r, FrameCodec::default()),
            wr: Connection::new(w, FrameCodec::default()),
            next_id: 10,
            remote,
            fingerprint,
            hash,
        }
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The file hash negotiated at hello, which verifies every transfer.
    pub fn hash_algo(&self) -> HashAlgo {
        self.hash
    }

    /// The `algo` field of a request for `algo`: left out in a SHA-256
    /// session, so that a server before negotiation understands it.
    pub(crate) fn name_algo(&self, algo: HashAlgo) -> Option<HashAlgo> {
        (algo != HashAlgo::Sha256 || self.hash != HashAlgo::Sha256).then_some(algo)
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Reserves `n` consecutive request ids for a pipelined batch; returns the first.
    pub(crate) fn reserve_ids(&mut self, n: u64) -> u64 {
        let first = self.next_id + 1;
        self.next_id += n;
        first
    }

    /// Reads the next answer, which must belong to request `id`.
    pub(crate) async fn read_answer(&mut self, id: u64) -> Result<Header, ClientError> {
        read_answer(&mut self.rd, id).await
    }

    /// Sends a request without a body and reads its single answer.
    pub(crate) async fn request(&mut self, req: &Request) -> Result<Header, ClientError> {
        let id = self.next_id();
        self.wr.send(&req.to_header(id, 0)).await?;
        self.read_answer(id).await
    }

    pub async fn pwd(&mut self) -> Result<String, ClientError> {
        Ok(self.request(&Request::Pwd).await?.decode::<PathAnswer>()?.path)
    }

    /// Changes the remote directory; returns the new one.
    pub async fn cd(&mut self, path: &str) -> Result<String, ClientError> {
        Ok(self.request(&Request::Cd { path: path.into() }).await?.decode::<PathAnswer>()?.path)
    }

    /// Lists a directory (or a single file), calling `each` once per page so
    /// that huge directories never sit whole in memory.
    pub async fn ls_pages(
        &mut self,
        path: Option<&str>,
        mut each: impl FnMut(Vec<Entry>) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let id = self.next_id();
        self.wr.send(&Request::Ls { path: path.map(str::to_string) }.to_header(id, 0)).await?;
        loop {
            let page: LsPage = self.read_answer(id).await?.decode()?;
            each(page.entries)?;
            if !page.more {
                return Ok(());
            }
        }
    }

    pub async fn ls(&mut self, path: Option<&str>) -> Result<Vec<Entry>, ClientError> {
        let mut all = Vec::new();
        self.ls_pages(path, |page| {
            all.extend(page);
            Ok(())
        })
        .await?;
        Ok(all)
    }

    pub async fn stat(&mut self, path: &str) -> Result<Entry, ClientError> {
        Ok(self.request(&Request::Stat { path: path.into() }).await?.decode::<StatAnswer>()?.entry)
    }

    pub async fn mkdir(&mut self, path: &str, parents: bool) -> Result<(), ClientError> {
        self.request(&Request::Mkdir { path: path.into(), parents }).await.map(drop)
    }

    pub async fn rm(&mut self, path: &str, recursive: bool) -> Result<(), ClientError> {
        self.request(&Request::Rm { path: path.into(), recursive }).await.map(drop)
    }

    pub async fn rmdir(&mut self, path: &str) -> Result<(), ClientError> {
        self.request(&Request::Rmdir { path: path.into() }).await.map(drop)
    }

    pub async fn mv(&mut self, from: &str, to: &str, overwrite: bool) -> Result<(), ClientError> {
        self.request(&Request::Mv { from: from.into(), to: to.into(), overwrite }).await.map(drop)
    }

    pub async fn df(&mut self) -> Result<DfInfo, ClientError> {
        Ok(self.request(&Request::Df).await?.decode()?)
    }

    /// The server's hash of a file (or of its first `length` bytes) in the
    /// session's algorithm ([`Session::hash_algo`]).
    pub async fn hash(&mut self, path: &str, length: Option<u64>) -> Result<String, ClientError> {
        self.hash_as(path, length, self.hash).await.map(|(hex, _)| hex)
    }

    /// The server's hash of a file (or of its first `length` bytes) in
    /// `algo`, which the server must offer; also the bytes it covers.
    pub async fn hash_as(
        &mut self,
        path: &str,
        length: Option<u64>,
        algo: HashAlgo,
    ) -> Result<(String, u64), ClientError> {
        let named = self.name_algo(algo);
        let answer: HashAnswer =
            self.request(&Request::Hash { path: path.into(), length, algo: named }).await?.decode()?;
        let hex = answer.digest.get(algo).ok_or_else(|| wrong_hash("hash", algo))?;
        Ok((hex.to_string(), answer.length))
    }

    /// Says goodbye and closes the connection.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let _ = self.request(&Request::Bye).await;
        let _ = self.wr.shutdown().await;
        Ok(())
    }
}

/// An answer whose hash is not in the algorithm asked for.
pub(crate) fn wrong_hash(what: &str, algo: HashAlgo) -> ClientError {
    ClientError::protocol(format!("{what}: the server's answer carries no {algo} hash"))
}

pub(crate) async fn read_answer(rd: &mut Connection<ReadHalf<ClientStream>>, id: u64) -> Result<Header, ClientError> {
    let header = rd.read_header().await?.ok_or_else(|| ClientError::protocol("the server closed the connection"))?;
    let (got, result) = parse_response(&header);
    // id 0 is the server speaking for the whole session (shutdown, idle timeout).
    if got != id && got != 0 {
        return Err(ClientError::protocol(format!("answer for request {got}, expected {id}")));
    }
    result?;
    if got == 0 {
        return Err(ClientError::protocol("unexpected session-level message"));
    }
    Ok(header)
}
