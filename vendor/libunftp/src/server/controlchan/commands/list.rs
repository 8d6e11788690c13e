//! The [RFC 959 List (`LIST`) command](https://www.rfc-editor.org/rfc/rfc959#section-4.1.3).
//!
//! Pathname whitespace follows [RFC 3659 section 2.2](https://www.rfc-editor.org/rfc/rfc3659#section-2.2).
//
// This command causes a list to be sent from the server to the
// passive DTP.  If the pathname specifies a directory or other
// group of files, the server should transfer a list of files
// in the specified directory.  If the pathname specifies a
// file then the server should send current information on the
// file.  A null argument implies the user's current working or
// default directory.  The data transfer is over the data
// connection in type ASCII or type EBCDIC.  (The user must
// ensure that the TYPE is appropriately ASCII or EBCDIC).
// Since the information on a file may vary widely from system
// to system, this information may be hard to use automatically
// in a program, but may be quite useful to a human user.

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
pub struct List;

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for List
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        // ferry patch 7: 150 only once the path is found (list_common.rs).
        let (cmd, path) = match args.parsed_command.clone() {
            Command::List { path, options } => {
                let path_clone = path.clone();
                (DataChanCmd::List { path, options }, path_clone)
            }
            _ => panic!("Programmer error, expected command to be LIST"),
        };
        list_common::list_if_found(args, cmd, path, false, "LIST").await
    }
}
