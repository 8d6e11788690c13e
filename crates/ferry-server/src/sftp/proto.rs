//! SFTP version 3 on the wire (draft-ietf-secsh-filexfer-02, what OpenSSH,
//! WinSCP, FileZilla, paramiko, curl and lftp speak), sans I/O: bytes to
//! requests, answers to bytes. Every length is checked before use, and a
//! packet is consumed exactly (trailing bytes are an error); nothing here
//! panics on peer input.
//!
//! Written here rather than taken from russh-sftp: its server loop reads a
//! packet over its cap as an error and then carries on mid-packet, answers
//! malformed packets with id 0, and moves file data through serde one byte at
//! a time. File data here stays a `Bytes` slice of the packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest packet accepted from a client (OpenSSH's sftp-server takes
/// 256 KiB; its client sends at most 32 KiB writes plus headers).
pub const MAX_PACKET: u32 = 256 * 1024 + 1024;
/// The largest read answered at once (OpenSSH's value, announced in `limits@openssh.com`).
pub const MAX_READ: u32 = 255 * 1024;
/// The largest write we ask clients to send (also announced).
pub const MAX_WRITE: u32 = 255 * 1024;

pub const SSH_FXP_INIT: u8 = 1;
pub const SSH_FXP_VERSION: u8 = 2;
const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_LSTAT: u8 = 7;
const SSH_FXP_FSTAT: u8 = 8;
const SSH_FXP_SETSTAT: u8 = 9;
const SSH_FXP_FSETSTAT: u8 = 10;
const SSH_FXP_OPENDIR: u8 = 11;
const SSH_FXP_READDIR: u8 = 12;
const SSH_FXP_REMOVE: u8 = 13;
const SSH_FXP_MKDIR: u8 = 14;
const SSH_FXP_RMDIR: u8 = 15;
const SSH_FXP_REALPATH: u8 = 16;
const SSH_FXP_STAT: u8 = 17;
const SSH_FXP_RENAME: u8 = 18;
const SSH_FXP_READLINK: u8 = 19;
const SSH_FXP_SYMLINK: u8 = 20;
const SSH_FXP_STATUS: u8 = 101;
const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_DATA: u8 = 103;
const SSH_FXP_NAME: u8 = 104;
const SSH_FXP_ATTRS: u8 = 105;
const SSH_FXP_EXTENDED: u8 = 200;
const SSH_FXP_EXTENDED_REPLY: u8 = 201;

pub const SSH_FXF_READ: u32 = 0x01;
pub const SSH_FXF_WRITE: u32 = 0x02;
pub const SSH_FXF_APPEND: u32 = 0x04;
pub const SSH_FXF_CREAT: u32 = 0x08;
pub const SSH_FXF_TRUNC: u32 = 0x10;
pub const SSH_FXF_EXCL: u32 = 0x20;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// Status codes (section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    Eof = 1,
    NoSuchFile = 2,
    PermissionDenied = 3,
    Failure = 4,
    BadMessage = 5,
    OpUnsupported = 8,
}

/// File attributes; absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    pub permissions: Option<u32>,
    pub atime_mtime: Option<(u32, u32)>,
}

/// A request from the client.
#[derive(Debug)]
pub enum Request {
    Init {
        version: u32,
    },
    Open {
        id: u32,
        path: String,
        flags: u32,
        attrs: Attrs,
    },
    Close {
        id: u32,
        handle: Bytes,
    },
    Read {
        id: u32,
        handle: Bytes,
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        handle: Bytes,
        offset: u64,
        data: Bytes,
    },
    Lstat {
        id: u32,
        path: String,
    },
    Fstat {
        id: u32,
        handle: Bytes,
    },
    SetStat {
        id: u32,
        path: String,
        attrs: Attrs,
    },
    FSetStat {
        id: u32,
        handle: Bytes,
        attrs: Attrs,
    },
    OpenDir {
        id: u32,
        path: String,
    },
    ReadDir {
        id: u32,
        handle: Bytes,
    },
    Remove {
        id: u32,
        path: String,
    },
    MkDir {
        id: u32,
        path: String,
        attrs: Attrs,
    },
    RmDir {
        id: u32,
        path: String,
    },
    RealPath {
        id: u32,
        path: String,
    },
    Stat {
        id: u32,
        path: String,
    },
    Rename {
        id: u32,
        from: String,
        to: String,
    },
    ReadLink {
        id: u32,
        path: String,
    },
    Symlink {
        id: u32,
    },
    /// `posix-rename@openssh.com`: rename replacing the target.
    PosixRename {
        id: u32,
        from: String,
        to: String,
    },
    StatVfs {
        id: u32,
        path: String,
    },
    FStatVfs {
        id: u32,
        handle: Bytes,
    },
    Fsync {
        id: u32,
        handle: Bytes,
    },
    Limits {
        id: u32,
    },
    Hardlink {
        id: u32,
    },
    /// `expand-path@openssh.com` (`~` is the home).
    ExpandPath {
        id: u32,
        path: String,
    },
    /// An extension we do not know: answered `OpUnsupported`.
    Extended {
        id: u32,
        name: String,
    },
}

/// Why a packet could not be parsed. `id` is the request id when it was read,
/// so the client still gets an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<u32>,
    pub message: &'static str,
}

struct Reader {
    b: Bytes,
}

type R<T> = Result<T, &'static str>;

impl Reader {
    fn u8(&mut self) -> R<u8> {
        if self.b.remaining() < 1 {
            return Err("truncated packet");
        }
        Ok(self.b.get_u8())
    }
    fn u32(&mut self) -> R<u32> {
        if self.b.remaining() < 4 {
            return Err("truncated packet");
        }
        Ok(self.b.get_u32())
    }
    fn u64(&mut self) -> R<u64> {
        if self.b.remaining() < 8 {
            return Err("truncated packet");
        }
        Ok(self.b.get_u64())
    }
    fn bytes(&mut self) -> R<Bytes> {
        let n = self.u32()? as usize;
        if self.b.remaining() < n {
            return Err("string longer than the packet");
        }
        Ok(self.b.split_to(n))
    }
    fn string(&mut self) -> R<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "file names must be UTF-8")
    }
    fn attrs(&mut self) -> R<Attrs> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.atime_mtime = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = self.u32()?;
            // Bounded by the packet: each pair takes at least 8 bytes.
            for _ in 0..n {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Ok(a)
    }
    fn end(&self) -> R<()> {
        if self.b.has_remaining() { Err("trailing bytes in packet") } else { Ok(()) }
    }
}

/// Parses one packet body (after its length): type, then fields.
pub fn decode(body: Bytes) -> Result<Request, DecodeError> {
    let mut r = Reader { b: body };
    let kind = r.u8().map_err(|message| DecodeError { id: None, message })?;
    if kind == SSH_FXP_INIT {
        let version = r.u32().map_err(|message| DecodeError { id: None, message })?;
        // Extension pairs after the version are ignored (none defined for clients).
        return Ok(Request::Init { version });
    }
    let id = r.u32().map_err(|message| DecodeError { id: None, message })?;
    let req = decode_with_id(kind, id, &mut r).and_then(|req| r.end().map(|_| req));
    req.map_err(|message| DecodeError { id: Some(id), message })
}

fn decode_with_id(kind: u8, id: u32, r: &mut Reader) -> R<Request> {
    Ok(match kind {
        SSH_FXP_OPEN => Request::Open { id, path: r.string()?, flags: r.u32()?, attrs: r.attrs()? },
        SSH_FXP_CLOSE => Request::Close { id, handle: r.bytes()? },
        SSH_FXP_READ => Request::Read { id, handle: r.bytes()?, offset: r.u64()?, len: r.u32()? },
        SSH_FXP_WRITE => Request::Write { id, handle: r.bytes()?, offset: r.u64()?, data: r.bytes()? },
        SSH_FXP_LSTAT => Request::Lstat { id, path: r.string()? },
        SSH_FXP_FSTAT => Request::Fstat { id, handle: r.bytes()? },
        SSH_FXP_SETSTAT => Request::SetStat { id, path: r.string()?, attrs: r.attrs()? },
        SSH_FXP_FSETSTAT => Request::FSetStat { id, handle: r.bytes()?, attrs: r.attrs()? },
        SSH_FXP_OPENDIR => Request::OpenDir { id, path: r.string()? },
        SSH_FXP_READDIR => Request::ReadDir { id, handle: r.bytes()? },
        SSH_FXP_REMOVE => Request::Remove { id, path: r.string()? },
        SSH_FXP_MKDIR => Request::MkDir { id, path: r.string()?, attrs: r.attrs()? },
        SSH_FXP_RMDIR => Request::RmDir { id, path: r.string()? },
        SSH_FXP_REALPATH => {
            let path = r.string()?;
            // SFTP v6 clients may append a control byte and compose paths; ignore them.
            r.b.clear();
            Request::RealPath { id, path }
        }
        SSH_FXP_STAT => Request::Stat { id, path: r.string()? },
        SSH_FXP_RENAME => Request::Rename { id, from: r.string()?, to: r.string()? },
        SSH_FXP_READLINK => Request::ReadLink { id, path: r.string()? },
        SSH_FXP_SYMLINK => {
            r.b.clear();
            Request::Symlink { id }
        }
        SSH_FXP_EXTENDED => {
            let name = r.string()?;
            match name.as_str() {
                "posix-rename@openssh.com" => Request::PosixRename { id, from: r.string()?, to: r.string()? },
                "statvfs@openssh.com" => Request::StatVfs { id, path: r.string()? },
                "fstatvfs@openssh.com" => Request::FStatVfs { id, handle: r.bytes()? },
                "fsync@openssh.com" => Request::Fsync { id, handle: r.bytes()? },
                "limits@openssh.com" => Request::Limits { id },
                "expand-path@openssh.com" => Request::ExpandPath { id, path: r.string()? },
                "hardlink@openssh.com" => {
                    r.b.clear();
                    Request::Hardlink { id }
                }
                _ => {
                    r.b.clear();
                    Request::Extended { id, name }
                }
            }
        }
        _ => return Err("unknown packet type"),
    })
}

/// Builds answers into one buffer, each with its length prefix.
#[derive(Default)]
pub struct Encoder {
    pub buf: BytesMut,
}

impl Encoder {
    fn begin(&mut self, kind: u8) -> usize {
        let at = self.buf.len();
        self.buf.put_u32(0);
        self.buf.put_u8(kind);
        at
    }

    fn finish(&mut self, at: usize) {
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn string(&mut self, s: &[u8]) {
        self.buf.put_u32(s.len() as u32);
        self.buf.put_slice(s);
    }

    fn attrs(&mut self, a: &Attrs) {
        let mut flags = 0;
        if a.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if a.uid_gid.is_some() {
            flags |= ATTR_UIDGID;
        }
        if a.permissions.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        if a.atime_mtime.is_some() {
            flags |= ATTR_ACMODTIME;
        }
        self.buf.put_u32(flags);
        if let Some(s) = a.size {
            self.buf.put_u64(s);
        }
        if let Some((u, g)) = a.uid_gid {
            self.buf.put_u32(u);
            self.buf.put_u32(g);
        }
        if let Some(p) = a.permissions {
            self.buf.put_u32(p);
        }
        if let Some((at, mt)) = a.atime_mtime {
            self.buf.put_u32(at);
            self.buf.put_u32(mt);
        }
    }

    pub fn version(&mut self, extensions: &[(&str, &str)]) {
        let at = self.begin(SSH_FXP_VERSION);
        self.buf.put_u32(3);
        for (name, data) in extensions {
            self.string(name.as_bytes());
            self.string(data.as_bytes());
        }
        self.finish(at);
    }

    pub fn status(&mut self, id: u32, status: Status, message: &str) {
        let at = self.begin(SSH_FXP_STATUS);
        self.buf.put_u32(id);
        self.buf.put_u32(status as u32);
        self.string(message.as_bytes());
        self.string(b"en");
        self.finish(at);
    }

    pub fn handle(&mut self, id: u32, handle: &[u8]) {
        let at = self.begin(SSH_FXP_HANDLE);
        self.buf.put_u32(id);
        self.string(handle);
        self.finish(at);
    }

    pub fn data(&mut self, id: u32, data: &[u8]) {
        let at = self.begin(SSH_FXP_DATA);
        self.buf.put_u32(id);
        self.string(data);
        self.finish(at);
    }

    /// `names`: (filename, longname, attributes).
    pub fn name(&mut self, id: u32, names: &[(String, String, Attrs)]) {
        let at = self.begin(SSH_FXP_NAME);
        self.buf.put_u32(id);
        self.buf.put_u32(names.len() as u32);
        for (name, long, attrs) in names {
            self.string(name.as_bytes());
            self.string(long.as_bytes());
            self.attrs(attrs);
        }
        self.finish(at);
    }

    pub fn attrs_reply(&mut self, id: u32, attrs: &Attrs) {
        let at = self.begin(SSH_FXP_ATTRS);
        self.buf.put_u32(id);
        self.attrs(attrs);
        self.finish(at);
    }

    /// An extended reply made of u64 fields (statvfs, limits).
    pub fn extended_u64s(&mut self, id: u32, fields: &[u64]) {
        let at = self.begin(SSH_FXP_EXTENDED_REPLY);
        self.buf.put_u32(id);
        for f in fields {
            self.buf.put_u64(*f);
        }
        self.finish(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(kind);
        fields(&mut b);
        b.freeze()
    }

    fn put_str(b: &mut BytesMut, s: &[u8]) {
        b.put_u32(s.len() as u32);
        b.put_slice(s);
    }

    #[test]
    fn write_keeps_data_and_checks_lengths() {
        let p = packet(SSH_FXP_WRITE, |b| {
            b.put_u32(7);
            put_str(b, b"h1");
            b.put_u64(10);
            put_str(b, b"hello");
        });
        match decode(p).unwrap() {
            Request::Write { id: 7, handle, offset: 10, data } => {
                assert_eq!(&handle[..], b"h1");
                assert_eq!(&data[..], b"hello");
            }
            other => panic!("{other:?}"),
        }
        // A declared length past the end is refused, with the id for the answer.
        let p = packet(SSH_FXP_WRITE, |b| {
            b.put_u32(8);
            put_str(b, b"h1");
            b.put_u64(0);
            b.put_u32(u32::MAX);
        });
        assert_eq!(decode(p).unwrap_err().id, Some(8));
        // Trailing bytes are refused.
        let p = packet(SSH_FXP_STAT, |b| {
            b.put_u32(9);
            put_str(b, b"/x");
            b.put_u8(0);
        });
        assert!(decode(p).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let mut v = Vec::with_capacity(len % 64);
            for _ in 0..len % 64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            if let Some(first) = v.first_mut() {
                *first = (len % 22) as u8;
            }
            let _ = decode(Bytes::from(v));
        }
    }

    #[test]
    fn attrs_round_trip() {
        let a = Attrs { size: Some(5), uid_gid: Some((1, 2)), permissions: Some(0o100644), atime_mtime: Some((3, 4)) };
        let mut e = Encoder::default();
        e.attrs_reply(1, &a);
        let mut r = Reader { b: e.buf.freeze() };
        r.u32().unwrap();
        assert_eq!(r.u8().unwrap(), SSH_FXP_ATTRS);
        assert_eq!(r.u32().unwrap(), 1);
        assert_eq!(r.attrs().unwrap(), a);
        r.end().unwrap();
    }
}
