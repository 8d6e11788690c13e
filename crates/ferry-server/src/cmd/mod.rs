//! One file per group of operations: the only layer that sees both wire
//! types and the cores. Each handler answers its request (one or more
//! response frames) and returns an error only when the stream itself failed.

mod exec;
mod fs;
mod transfer;

use ferry_proto::{ErrorCode, FrameError, Request, WireError};

use crate::home::HomeError;
use crate::session::{Conn, Session, reply_error_skip};
use crate::vfs::VfsError;

pub async fn dispatch(
    session: &mut Session,
    conn: &mut Conn,
    id: u64,
    req: Request,
    body_len: u64,
) -> Result<(), FrameError> {
    // Only uploads and stdin carry bodies; anything else sent with one is a
    // client bug, answered without losing the stream.
    let carries_body = matches!(req, Request::Put { .. } | Request::PutData | Request::Stdin { .. });
    if body_len > 0 && !carries_body {
        return reply_error_skip(conn, id, &WireError::new(ErrorCode::BadRequest, "this operation takes no body"))
            .await;
    }
    let result = match req {
        Request::Pwd => fs::pwd(session, conn, id),
        Request::Cd { path } => fs::cd(session, conn, id, path).await,
        Request::Ls { path } => fs::ls(session, conn, id, path).await,
        Request::Stat { path } => fs::stat(session, conn, id, path).await,
        Request::Mkdir { path, parents } => fs::mkdir(session, conn, id, path, parents).await,
        Request::Rm { path, recursive } => fs::rm(session, conn, id, path, recursive).await,
        Request::Rmdir { path } => fs::rmdir(session, conn, id, path).await,
        Request::Mv { from, to, overwrite } => fs::mv(session, conn, id, from, to, overwrite).await,
        Request::Df => fs::df(session, conn, id),
        Request::Put { path, size, offset, upload_id, sha256, overwrite, wait, algo, hash } => {
            let args =
                transfer::PutArgs { path, size, offset, upload_id, sha256, overwrite, wait, algo, hash, body_len };
            transfer::put(session, conn, id, args).await
        }
        Request::UploadStatus { path, size, upload_id, algo } => {
            transfer::upload_status(session, conn, id, path, size, upload_id, algo).await
        }
        Request::Get { path, offset, algo } => transfer::get(session, conn, id, path, offset, algo).await,
        Request::Hash { path, length, algo } => transfer::hash(session, conn, id, path, length, algo).await,
        Request::Exec { argv } => exec::exec(session, conn, id, argv).await,
        Request::Hello { .. } | Request::AuthStart { .. } | Request::AuthFinish { .. } => {
            Err(Reply::Wire(WireError::new(ErrorCode::BadRequest, "already logged in")))
        }
        Request::PutEnd { .. } | Request::PutData => {
            Err(Reply::Wire(WireError::new(ErrorCode::BadRequest, "put_data or put_end without a put")))
        }
        Request::Stdin { .. } | Request::StdinEof { .. } | Request::Cancel { .. } => {
            // The command they were meant for has already ended: ignore quietly.
            return conn.skip_body().await.map(|_| ());
        }
        Request::Bye => Ok(()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(Reply::Wire(err)) => reply_error_skip(conn, id, &err).await,
        Err(Reply::Stream(e)) => Err(e),
    }
}

/// A handler's failure: an answer for the client, or a broken stream.
pub enum Reply {
    Wire(WireError),
    Stream(FrameError),
}

impl From<FrameError> for Reply {
    fn from(e: FrameError) -> Self {
        Reply::Stream(e)
    }
}

impl From<WireError> for Reply {
    fn from(e: WireError) -> Self {
        Reply::Wire(e)
    }
}

impl From<HomeError> for Reply {
    fn from(e: HomeError) -> Self {
        Reply::Wire(e.into())
    }
}

impl From<VfsError> for Reply {
    fn from(e: VfsError) -> Self {
        Reply::Wire(e.into())
    }
}

/// The one place where file-system errors become wire errors.
impl From<VfsError> for WireError {
    fn from(e: VfsError) -> Self {
        let code = match &e {
            VfsError::NotFound(_) => ErrorCode::NotFound,
            VfsError::NotADirectory(_) => ErrorCode::NotADirectory,
            VfsError::IsADirectory(_) => ErrorCode::IsADirectory,
            VfsError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            VfsError::DirectoryNotEmpty(_) => ErrorCode::DirectoryNotEmpty,
            VfsError::InvalidName(_) => ErrorCode::InvalidName,
            VfsError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            VfsError::OutsideHome(_) => ErrorCode::OutsideHome,
            VfsError::InvalidMove(_) => ErrorCode::InvalidMove,
            _ => ErrorCode::Internal,
        };
        WireError::new(code, e.to_string())
    }
}

/// The one place where the core's errors become wire errors, by variant.
impl From<HomeError> for WireError {
    fn from(e: HomeError) -> Self {
        if let HomeError::Vfs(v) = e {
            return v.into();
        }
        let code = match &e {
            HomeError::Quota(_) | HomeError::FileLimit(_) => ErrorCode::QuotaExceeded,
            HomeError::UploadNotFound(_) | HomeError::OffsetMismatch { .. } | HomeError::Incomplete { .. } => {
                ErrorCode::UploadNotFound
            }
            HomeError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            // Retryable: the quota's database is back in a moment, or not.
            HomeError::Busy(_) | HomeError::TakenOver(_) | HomeError::QuotaUnavailable(_) => ErrorCode::Busy,
            HomeError::BadHash(_) | HomeError::BadRange(_) => ErrorCode::BadRequest,
            HomeError::FileChanged(_) => ErrorCode::FileChanged,
            _ => ErrorCode::Internal,
        };
        WireError::new(code, e.to_string())
    }
}
