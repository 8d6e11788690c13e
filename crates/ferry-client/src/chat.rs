//! The chat client: [`ChatClient`] is the engine (join, reliable send,
//! in-order receive, heartbeats), usable without a terminal; [`run_line_chat`]
//! is a thin line interface on top.
//!
//! A background task owns the socket. It retransmits unacknowledged `Msg` and
//! `Who` with backoff, acks the relay's numbered items, drops duplicates,
//! releases items in order, and pings every heartbeat. Events that the
//! application has not read yet stay in a bounded reorder window; past it the
//! engine stops acking, so the relay slows down instead of memory growing.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::udp::chat::{self as wire, ClientDatagram, MAX_DATAGRAM, RefuseCode, RelayDatagram, TooLong};
use ferry_proto::udp::reliable::{Inbox, Offer, Outbox, RetryPolicy};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Client-side knobs; the relay announces heartbeat and timeout at join.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// How long each `Join` attempt waits for an answer.
    pub join_timeout: Duration,
    /// How many `Join` datagrams to send before giving up.
    pub join_attempts: u32,
    /// Retransmission of our messages.
    pub retry: RetryPolicy,
    /// Events buffered for the application (past that, see module docs).
    pub event_buffer: usize,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            join_timeout: Duration::from_millis(500),
            join_attempts: 6,
            retry: RetryPolicy::default(),
            event_buffer: 256,
        }
    }
}

/// Something the relay told us, in order per sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    Message {
        from: String,
        text: String,
        private: bool,
    },
    Who(Vec<String>),
    Notice(String),
    /// The session is over (relay gone silent, said `Bye`, or forgot us).
    Disconnected(String),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    #[error("no answer from the relay to our join")]
    JoinTimeout,
    #[error("refused ({code:?}): {reason}")]
    Refused { code: RefuseCode, reason: String },
    #[error("invalid nickname {0:?} (1 to 32 of A-Z a-z 0-9 _ -)")]
    BadNick(String),
    #[error(transparent)]
    TooLong(#[from] TooLong),
    #[error("unknown command {0:?} (try /who, /quit or @nick text)")]
    UnknownCommand(String),
    #[error("nothing to send to {0}")]
    EmptyPrivate(String),
    #[error("not all messages were acknowledged in time")]
    FlushTimeout,
    #[error("disconnected: {0}")]
    Disconnected(String),
    #[error("the chat session is closed")]
    Closed,
}

/// One line typed by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Empty,
    Say(String),
    Tell { to: String, text: String },
    Who,
    Quit,
}

/// `text` to everyone, `@nick text` to one, `/who`, `/quit`.
pub fn parse_line(line: &str) -> Result<Line, ChatError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Line::Empty);
    }
    if let Some(rest) = line.strip_prefix('@') {
        let (to, text) = rest.split_once(' ').unwrap_or((rest, ""));
        if !wire::valid_nick(to) {
            return Err(ChatError::BadNick(to.to_owned()));
        }
        if text.trim().is_empty() {
            return Err(ChatError::EmptyPrivate(to.to_owned()));
        }
        return Ok(Line::Tell { to: to.to_owned(), text: text.to_owned() });
    }
    if line.starts_with('/') {
        return match line.trim() {
            "/who" => Ok(Line::Who),
            "/quit" => Ok(Line::Quit),
            other => Err(ChatError::UnknownCommand(other.to_owned())),
        };
    }
    Ok(Line::Say(line.to_owned()))
}

enum Request {
    Msg { text: String, to: Option<String> },
    Who,
}

enum Cmd {
    Send(Request),
    Quit(oneshot::Sender<()>),
}

/// A joined chat session.
pub struct ChatClient {
    nick: String,
    local_addr: SocketAddr,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::Receiver<ChatEvent>,
    /// Requests submitted, and how many of them the relay acknowledged.
    submitted: u64,
    acked: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl ChatClient {
    /// Joins the relay at `relay` as `nick` with default options.
    pub async fn join(relay: SocketAddr, nick: &str) -> Result<ChatClient, ChatError> {
        Self::join_with(relay, nick, ChatOptions::default()).await
    }

    pub async fn join_with(relay: SocketAddr, nick: &str, opts: ChatOptions) -> Result<ChatClient, ChatError> {
        if !wire::valid_nick(nick) {
            return Err(ChatError::BadNick(nick.to_owned()));
        }
        let socket = super::connected_socket(relay).await?;
        let local_addr = socket.local_addr()?;
        // Issue 12: the first join (no cookie) is answered with a `retry`
        // cookie that the next one echoes, proving we receive at our address.
        // Joins are padded (`encode_join`) because the relay never answers an
        // unproven address with more bytes than it sent.
        let mut join = wire::encode_join(nick, None);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut welcome = None;
        'attempts: for _ in 0..opts.join_attempts.max(1) {
            socket.send(&join).await?;
            let deadline = Instant::now() + opts.join_timeout;
            loop {
                let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_elapsed) => continue 'attempts,
                    // Port unreachable: the relay may be starting; retry.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tokio::time::sleep_until(deadline).await;
                        continue 'attempts;
                    }
                    Ok(r) => r?,
                };
                match wire::decode_relay(&buf[..n]) {
                    // Send the join again with the cookie, at once. A new
                    // cookie (the old one expired) counts as an attempt, so a
                    // relay that only ever answers `retry` cannot keep us.
                    Ok(RelayDatagram::Retry { cookie }) => {
                        join = wire::encode_join(nick, Some(&cookie));
                        continue 'attempts;
                    }
                    Ok(RelayDatagram::Welcome { key, heartbeat_ms, timeout_ms, .. }) => {
                        welcome = Some((key, heartbeat_ms, timeout_ms));
                        break 'attempts;
                    }
                    Ok(RelayDatagram::Refused { code, reason }) => {
                        return Err(ChatError::Refused { code, reason });
                    }
                    // Anything else predates our Welcome; the relay resends.
                    _ => {}
                }
            }
        }
        let Some((key, heartbeat_ms, timeout_ms)) = welcome else {
            return Err(ChatError::JoinTimeout);
        };
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::channel(opts.event_buffer.max(1));
        let (acked_tx, acked_rx) = watch::channel(0);
        let heartbeat = Duration::from_millis(heartbeat_ms.max(10));
        let engine = Engine {
            socket,
            key,
            outbox: Outbox::new(opts.retry),
            inbox: Inbox::new(opts.retry.window),
            events: ev_tx,
            acked: acked_tx,
            acked_count: 0,
            heartbeat,
            timeout: Duration::from_millis(timeout_ms).max(heartbeat * 2),
            last_heard: Instant::now(),
            next_ping: Instant::now() + heartbeat,
        };
        let task = tokio::spawn(engine.run(cmd_rx));
        Ok(ChatClient {
            nick: nick.to_owned(),
            local_addr,
            cmds: cmd_tx,
            events: ev_rx,
            submitted: 0,
            acked: acked_rx,
            task,
        })
    }

    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// The local address the relay sees (before any NAT).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn send(&mut self, req: Request) -> Result<(), ChatError> {
        self.cmds.send(Cmd::Send(req)).map_err(|_| ChatError::Closed)?;
        self.submitted += 1;
        Ok(())
    }

    /// Sends `text` to everyone. A text too long for one datagram is an
    /// error here, before anything is sent.
    pub fn say(&mut self, text: &str) -> Result<(), ChatError> {
        wire::check_fits(&self.nick, None, text)?;
        self.send(Request::Msg { text: text.to_owned(), to: None })
    }

    /// Sends `text` to `to` only.
    pub fn tell(&mut self, to: &str, text: &str) -> Result<(), ChatError> {
        if !wire::valid_nick(to) {
            return Err(ChatError::BadNick(to.to_owned()));
        }
        wire::check_fits(&self.nick, Some(to), text)?;
        self.send(Request::Msg { text: text.to_owned(), to: Some(to.to_owned()) })
    }

    /// Asks for the list of who is online; the answer is a [`ChatEvent::Who`].
    pub fn who(&mut self) -> Result<(), ChatError> {
        self.send(Request::Who)
    }

    /// Acts on a parsed line, except [`Line::Quit`] (call [`ChatClient::quit`]).
    pub fn submit(&mut self, line: Line) -> Result<(), ChatError> {
        match line {
            Line::Empty | Line::Quit => Ok(()),
            Line::Say(text) => self.say(&text),
            Line::Tell { to, text } => self.tell(&to, &text),
            Line::Who => self.who(),
        }
    }

    /// The next event; `None` once the engine has stopped and all events
    /// were read.
    pub async fn next_event(&mut self) -> Option<ChatEvent> {
        self.events.recv().await
    }

    /// Waits until the relay has acknowledged everything submitted so far.
    pub async fn flush(&mut self, timeout: Duration) -> Result<(), ChatError> {
        let want = self.submitted;
        match tokio::time::timeout(timeout, self.acked.wait_for(|&n| n >= want)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_closed)) => Err(ChatError::Closed),
            Err(_elapsed) => Err(ChatError::FlushTimeout),
        }
    }

    /// Leaves: waits (bounded) for pending messages to be acknowledged, then
    /// tells the relay and waits (bounded) for its `Bye`.
    pub async fn quit(self) -> Result<(), ChatError> {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Quit(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
        Ok(())
    }
}

struct Engine {
    socket: UdpSocket,
    key: String,
    outbox: Outbox<ClientDatagram>,
    inbox: Inbox<RelayDatagram>,
    events: mpsc::Sender<ChatEvent>,
    acked: watch::Sender<u64>,
    acked_count: u64,
    heartbeat: Duration,
    timeout: Duration,
    last_heard: Instant,
    next_ping: Instant,
}

/// Why the engine's `select!` returned.
enum Wake {
    Timer,
    Recv(io::Result<usize>),
    Cmd(Option<Cmd>),
}

/// What a relay datagram means for the engine's loop.
enum Flow {
    Continue,
    Stop(String),
}

impl Engine {
    async fn send(&self, d: &ClientDatagram) {
        if let Err(e) = self.socket.send(&wire::encode_client(d)).await {
            tracing::debug!(error = %e, "chat: send failed");
        }
    }

    async fn on_datagram(&mut self, bytes: &[u8]) -> Flow {
        let Ok(d) = wire::decode_relay(bytes) else {
            return Flow::Continue;
        };
        self.last_heard = Instant::now();
        match d {
            RelayDatagram::Ack { seq } => {
                if self.outbox.ack(seq) {
                    self.acked_count += 1;
                    self.acked.send_replace(self.acked_count);
                }
            }
            RelayDatagram::Bye => return Flow::Stop("the relay closed".into()),
            RelayDatagram::Refused { code: RefuseCode::BadKey, reason } => {
                return Flow::Stop(format!("the relay no longer knows us: {reason}"));
            }
            RelayDatagram::Refused { reason, .. } => {
                let _ = self.events.try_send(ChatEvent::Notice(reason));
            }
            RelayDatagram::Welcome { .. } | RelayDatagram::Retry { .. } | RelayDatagram::Pong => {}
            d @ (RelayDatagram::Deliver { .. } | RelayDatagram::WhoList { .. } | RelayDatagram::Notice { .. }) => {
                // stream_seq is Some for exactly these three variants.
                let seq = d.stream_seq().unwrap_or(0);
                match self.inbox.offer(seq, d) {
                    Offer::New | Offer::Duplicate => {
                        let ack = ClientDatagram::Ack { key: self.key.clone(), seq };
                        self.send(&ack).await;
                    }
                    Offer::OutOfWindow => {}
                }
            }
        }
        Flow::Continue
    }

    async fn goodbye(&mut self, wait_for_bye: bool) {
        let quit = ClientDatagram::Quit { key: self.key.clone() };
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        for _ in 0..3 {
            self.send(&quit).await;
            if !wait_for_bye {
                return;
            }
            let deadline = Instant::now() + self.outbox_rto();
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                if matches!(wire::decode_relay(&buf[..n]), Ok(RelayDatagram::Bye)) {
                    return;
                }
            }
        }
    }

    fn outbox_rto(&self) -> Duration {
        (self.heartbeat / 2).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut quitting: Option<(oneshot::Sender<()>, Instant)> = None;
        loop {
            let now = Instant::now();
            for (_, d) in self.outbox.poll_transmit(now.into_std()) {
                self.send(&d).await;
            }
            if now >= self.next_ping {
                let ping = ClientDatagram::Ping { key: self.key.clone() };
                self.send(&ping).await;
                self.next_ping = now + self.heartbeat;
            }
            let silent_until = self.last_heard + self.timeout;
            if now >= silent_until {
                let _ = self.events.try_send(ChatEvent::Disconnected("the relay went silent".into()));
                break;
            }
            if let Some((_, deadline)) = &quitting
                && (self.outbox.is_empty() || now >= *deadline)
            {
                self.goodbye(true).await;
                if let Some((tx, _)) = quitting.take() {
                    let _ = tx.send(());
                }
                return;
            }
            let mut wake = self.next_ping.min(silent_until);
            if let Some(due) = self.outbox.next_due() {
                wake = wake.min(Instant::from_std(due));
            }
            if let Some((_, deadline)) = &quitting {
                wake = wake.min(*deadline);
            }
            let has_ready = self.inbox.has_ready();
            let wake_reason = tokio::select! {
                r = self.socket.recv(&mut buf) => Wake::Recv(r),
                cmd = cmds.recv(), if quitting.is_none() => Wake::Cmd(cmd),
                permit = self.events.reserve(), if has_ready => match permit {
                    Ok(permit) => {
                        if let Some(d) = self.inbox.pop_ready() {
                            permit.send(to_event(d));
                        }
                        Wake::Timer
                    }
                    Err(_closed) => Wake::Cmd(None),
                },
                () = tokio::time::sleep_until(wake) => Wake::Timer,
            };
            match wake_reason {
                Wake::Timer => {}
                Wake::Recv(Ok(n)) => {
                    if let Flow::Stop(why) = self.on_datagram(&buf[..n]).await {
                        let _ = self.events.try_send(ChatEvent::Disconnected(why));
                        break;
                    }
                }
                // An ICMP error from a lost relay: the silence timer decides.
                Wake::Recv(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Wake::Recv(Err(e)) => {
                    let _ = self.events.try_send(ChatEvent::Disconnected(e.to_string()));
                    break;
                }
                Wake::Cmd(Some(Cmd::Send(req))) => {
                    let key = self.key.clone();
                    self.outbox.push_with(|seq| match req {
                        Request::Msg { text, to } => ClientDatagram::Msg { key, seq, text, to },
                        Request::Who => ClientDatagram::Who { key, seq },
                    });
                }
                Wake::Cmd(Some(Cmd::Quit(tx))) => {
                    quitting = Some((tx, Instant::now() + self.timeout));
                }
                // The ChatClient (or its event receiver) was dropped: leave
                // without waiting.
                Wake::Cmd(None) => {
                    self.goodbye(false).await;
                    return;
                }
            }
        }
        // Disconnected: release a pending quit().
        if let Some((tx, _)) = quitting.take() {
            let _ = tx.send(());
        }
    }
}

fn to_event(d: RelayDatagram) -> ChatEvent {
    match d {
        RelayDatagram::Deliver { from, text, private, .. } => ChatEvent::Message { from, text, private },
        RelayDatagram::WhoList { nicks, .. } => ChatEvent::Who(nicks),
        RelayDatagram::Notice { text, .. } => ChatEvent::Notice(text),
        // Only numbered stream items enter the inbox.
        other => ChatEvent::Notice(format!("{other:?}")),
    }
}

/// Replaces control characters so that another user's text cannot drive
/// the terminal (escape sequences).
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect()
}

/// One line of text for an event, without the newline.
pub fn format_event(ev: &ChatEvent) -> String {
    match ev {
        ChatEvent::Message { from, text, private: false } => format!("<{}> {}", printable(from), printable(text)),
        ChatEvent::Message { from, text, private: true } => format!("*{}* {}", printable(from), printable(text)),
        ChatEvent::Who(nicks) => format!("* online: {}", printable(&nicks.join(", "))),
        ChatEvent::Notice(text) => format!("* {}", printable(text)),
        ChatEvent::Disconnected(why) => format!("! disconnected: {}", printable(why)),
    }
}

/// The line interface: reads lines from `stdin` (`text`, `@nick text`,
/// `/who`, `/quit`), writes incoming messages to `stdout` as they arrive.
/// Returns at `/quit` or end of input (after leaving), or with an error when
/// the relay is lost.
pub async fn run_line_chat(
    addr: SocketAddr,
    nick: &str,
    stdin: impl AsyncBufRead + Unpin,
    mut stdout: impl AsyncWrite + Unpin,
) -> Result<(), ChatError> {
    let mut client = ChatClient::join(addr, nick).await?;
    let mut lines = stdin.lines();
    stdout.write_all(format!("* joined as {nick}; @nick text to whisper, /who, /quit\n").as_bytes()).await?;
    stdout.flush().await?;
    loop {
        let out = tokio::select! {
            line = lines.next_line() => match line? {
                None => break,
                Some(line) => match parse_line(&line).and_then(|l| match l {
                    Line::Quit => Ok(None),
                    l => client.submit(l).map(|()| Some(())),
                }) {
                    Ok(None) => break,
                    Ok(Some(())) => continue,
                    Err(e) => format!("! {e}"),
                },
            },
            ev = client.next_event() => match ev {
                None => return Err(ChatError::Closed),
                Some(ChatEvent::Disconnected(why)) => {
                    let line = format!("! disconnected: {why}\n");
                    stdout.write_all(line.as_bytes()).await?;
                    stdout.flush().await?;
                    return Err(ChatError::Disconnected(why));
                }
                Some(ev) => format_event(&ev),
            },
        };
        stdout.write_all(out.as_bytes()).await?;
        stdout.write_all(b"\n").await?;
        stdout.flush().await?;
    }
    client.quit().await?;
    stdout.write_all(b"* bye\n").await?;
    stdout.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(parse_line("hi there").unwrap(), Line::Say("hi there".into()));
        assert_eq!(parse_line("@bob psst").unwrap(), Line::Tell { to: "bob".into(), text: "psst".into() });
        assert_eq!(parse_line("/who\r\n").unwrap(), Line::Who);
        assert_eq!(parse_line("/quit").unwrap(), Line::Quit);
        assert_eq!(parse_line("   ").unwrap(), Line::Empty);
        assert!(matches!(parse_line("/nope"), Err(ChatError::UnknownCommand(_))));
        assert!(matches!(parse_line("@bob"), Err(ChatError::EmptyPrivate(_))));
        assert!(matches!(parse_line("@b!b x"), Err(ChatError::BadNick(_))));
    }

    #[test]
    fn control_characters_are_not_printed() {
        let ev = ChatEvent::Message { from: "m".into(), text: "\u{1b}[2Jboo".into(), private: false };
        assert_eq!(format_event(&ev), "<m> \u{FFFD}[2Jboo");
    }
}
