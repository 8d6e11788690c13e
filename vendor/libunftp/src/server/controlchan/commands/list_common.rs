//! ferry patch 7 (FERRY-PATCHES.md): shared by LIST, NLST and MLSD.

use crate::{
    auth::UserDetail,
    server::{
        chancomms::{ControlChanMsg, DataChanCmd},
        controlchan::{Reply, ReplyCode, error::ControlChanError, handler::CommandContext},
    },
    storage::{Error, ErrorKind, Metadata, StorageBackend},
};
use std::sync::Arc;

/// Answers `150` and hands `cmd` to the data channel only once the listed
/// path (`path`, or the working directory) is found, and is a directory if
/// `need_dir`. Otherwise the reply is the storage's error (`550`) and the
/// data connection is closed unused. Upstream answered `150` first and the
/// `550` after it, which rclone 1.60's FTP library reports as a failed
/// transfer rather than a missing directory: `rclone copy` into a new
/// directory failed at once.
pub(crate) async fn list_if_found<S, U>(
    args: CommandContext<S, U>,
    cmd: DataChanCmd,
    path: Option<String>,
    need_dir: bool,
    name: &'static str,
) -> Result<Reply, ControlChanError>
where
    U: UserDetail + 'static,
    S: StorageBackend<U> + 'static,
    S::Metadata: Metadata,
{
    let logger = args.logger;
    let mut session = args.session.lock().await;
    let Some(data_cmd_tx) = session.data_cmd_tx.take() else {
        slog::warn!(logger, "{}: no data connection established for {:?}", name, path);
        return Ok(Reply::new(ReplyCode::CantOpenDataConnection, "No data connection established"));
    };
    let data_abort_tx = session.data_abort_tx.clone();
    let user = session.user.clone();
    let storage = Arc::clone(&session.storage);
    let listed = match path.as_deref() {
        Some(p) if p != "." => session.cwd.join(p),
        _ => session.cwd.clone(),
    };
    drop(session);
    let control = args.tx_control_chan;
    tokio::spawn(async move {
        let found = match user.as_ref() {
            // Not reached: listing needs a login. Still answered, never left hanging.
            None => Err(Error::from(ErrorKind::PermissionDenied)),
            Some(user) => match storage.metadata(user, &listed).await {
                Ok(meta) if need_dir && !meta.is_dir() => Err(Error::new(ErrorKind::PermanentDirectoryNotAvailable, "not a directory")),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
        };
        match found {
            Ok(()) => {
                let sending = Reply::new(ReplyCode::FileStatusOkay, "Sending directory list");
                if control.send(ControlChanMsg::CommandChannelReply(sending)).await.is_err() {
                    return;
                }
                if let Err(err) = data_cmd_tx.send(cmd).await {
                    slog::warn!(logger, "{}: could not notify the data channel: {}", name, err);
                }
            }
            Err(e) => {
                slog::info!(logger, "{}: {:?} not listed: {}", name, listed, e);
                if let Some(abort) = data_abort_tx {
                    // The data channel ends (and closes its connection) unused.
                    let _ = abort.send(()).await;
                }
                let _ = control.send(ControlChanMsg::StorageError(e)).await;
            }
        }
    });
    Ok(Reply::none())
}
