//! A logged-in session: navigation and file management. Transfers and exec
//! are in their own modules.

use ferry_proto::msg::parse_response;
use ferry_proto::{Connection, Entry, FrameCodec, Header, Request};
use tokio::io::{ReadHalf, WriteHalf};

use crate::connect::ClientStream;
use crate::{ClientError, Remote};

pub struct Session {
    pub(crate) rd: Connection<ReadHalf<ClientStream>>,
    pub(crate) wr: Connection<WriteHalf<ClientStream>>,
    pub(crate) next_id: u64,
    remote: Remote,
    pub fingerprint: Option<String>,
}

/// Usage and quota as `ferry df` shows them.
/// What `df` answers.
pub type DfInfo = ferry_proto::resp::DfAnswer;
use ferry_proto::resp::{HashAnswer, LsPage, PathAnswer, StatAnswer};

impl Session {
    pub(crate) fn new(conn: Connection<ClientStream>, remote: Remote, fingerprint: Option<String>) -> Self {
        // The server says nothing unasked after login, so no input is lost by
        // dropping the (empty) read buffer here.
        let (r, w) = tokio::io::split(conn.into_inner());
        Session {
            rd: Connection::new(r, FrameCodec::default()),
            wr: Connection::new(w, FrameCodec::default()),
            next_id: 10,
            remote,
            fingerprint,
        }
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
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

    /// The server's SHA-256 of a file (or of its first `length` bytes).
    pub async fn hash(&mut self, path: &str, length: Option<u64>) -> Result<String, ClientError> {
        Ok(self.request(&Request::Hash { path: path.into(), length }).await?.decode::<HashAnswer>()?.sha256)
    }

    /// Says goodbye and closes the connection.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let _ = self.request(&Request::Bye).await;
        let _ = self.wr.shutdown().await;
        Ok(())
    }
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
