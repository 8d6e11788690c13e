//! The RFC 3659 Machine List Directory (`MLSD`) command
//
// This command causes a listing to be sent from the server to the passive DTP.
// The server-DTP will send a list of the contents of the specified directory
// over the data connection. Each file entry is formatted using the machine-readable
// format defined in RFC 3659, making it much easier for FTP clients to parse
// compared to the traditional LIST command output.

use super::list_common;
use crate::server::chancomms::DataChanCmd;
use crate::{
    auth::UserDetail,
    server::controlchan::{
        Command, Reply,
        error::ControlChanError,
        handler::{CommandContext, CommandHandler},
    },
    storage::{Metadata, StorageBackend},
};
use async_trait::async_trait;

#[derive(Debug)]
pub struct Mlsd;

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Mlsd
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        // ferry patch 7: 150 only once the path is found (list_common.rs).
        let (cmd, path) = match args.parsed_command.clone() {
            Command::Mlsd { path } => {
                let path_clone = path.clone();
                (DataChanCmd::Mlsd { path }, path_clone)
            }
            _ => panic!("Programmer error, expected command to be MLSD"),
        };
        list_common::list_if_found(args, cmd, path, true, "MLSD").await
    }
}
