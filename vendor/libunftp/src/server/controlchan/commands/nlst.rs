//! The `NAME LIST (NLST)` command
//
// This command causes a directory listing to be sent from
// server to user site.  The pathname should specify a
// directory or other system-specific file group descriptor; a
// null argument implies the current directory.  The server
// will return a stream of names of files and no other
// information.  The data will be transferred in ASCII or
// EBCDIC type over the data connection as valid pathname
// strings separated by <CRLF> or <NL>.  (Again the user must
// ensure that the TYPE is correct.)  This command is intended
// to return information that can be used by a program to
// further process the files automatically.  For example, in
// the implementation of a "multiple get" function.

use super::list_common;
use crate::server::chancomms::DataChanCmd;
use crate::{
    auth::UserDetail,
    server::controlchan::{
        Reply,
        command::Command,
        error::ControlChanError,
        handler::{CommandContext, CommandHandler},
    },
    storage::{Metadata, StorageBackend},
};
use async_trait::async_trait;

#[derive(Debug)]
pub struct Nlst;

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Nlst
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        // ferry patch 7: 150 only once the path is found (list_common.rs).
        let (cmd, path) = match args.parsed_command.clone() {
            Command::Nlst { path } => {
                let path_clone = path.clone();
                (DataChanCmd::Nlst { path }, path_clone)
            }
            _ => panic!("Programmer error, expected command to be NLST"),
        };
        list_common::list_if_found(args, cmd, path, false, "NLST").await
    }
}
