//! The control protocol: any request line gets a command or an error reply,
//! never a panic; a decoded command encodes back to itself; `set`'s rates
//! parse as the daemon parses them. One input in [`SOCKET_EVERY`] also goes
//! through a real control socket (the daemon's server, a handler that echoes
//! the command): every line sent, the last one with or without its newline,
//! gets exactly the reply [`decode`] says, in order.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use shaper_user::{
    control::{
        server::{decode, ControlSocket, Handler},
        Command, Reply, Request,
    },
    units,
};

use crate::{Rng, Target};

/// One input in this many is also sent through the socket.
const SOCKET_EVERY: usize = 16;

pub struct Control {
    path: PathBuf,
}

impl Control {
    /// Starts a control socket server, on a thread of its own, in a
    /// directory of its own; it lives as long as the process.
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("shaper-fuzz-control-{}", std::process::id()));
        let path = dir.join("control.sock");
        let (bound, ready) = std::sync::mpsc::channel();
        let at = path.clone();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return drop(bound.send(Err(anyhow::Error::from(e)))),
            };
            runtime.block_on(async move {
                match ControlSocket::bind(&at) {
                    Ok(socket) => {
                        let _ = bound.send(Ok(()));
                        socket.serve(handler()).await;
                    }
                    Err(e) => drop(bound.send(Err(e.into()))),
                }
            });
        });
        ready.recv().context("the server thread ended")?.context("binding the control socket")?;
        Ok(Self { path })
    }

    /// Sends `input` on a new connection and checks the replies.
    fn through_socket(&self, input: &[u8]) {
        let mut stream = UnixStream::connect(&self.path).unwrap_or_else(|e| panic!("connecting: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
        stream.write_all(input).unwrap_or_else(|e| panic!("writing: {e}"));
        stream.shutdown(std::net::Shutdown::Write).unwrap_or_else(|e| panic!("{e}"));
        let replies: Vec<serde_json::Value> = BufReader::new(stream)
            .lines()
            .map(|l| l.unwrap_or_else(|e| panic!("reading the replies: {e}")))
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("reply {l:?} is not JSON: {e}")))
            .collect();
        let handler = handler();
        let mut expected = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let end = rest.iter().position(|b| *b == b'\n').map_or(rest.len(), |i| i + 1);
            let reply = decode(&rest[..end]).map_or_else(|refused| refused, |command| handler(command));
            expected.push(serde_json::to_value(&reply).unwrap_or_else(|e| panic!("{e}")));
            rest = &rest[end..];
        }
        assert_eq!(replies, expected, "the socket's replies differ from what decode() gives");
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Answers every command with its debug form.
fn handler() -> Handler {
    Arc::new(|command: Command| Reply::encode(&format!("{command:?}")))
}

pub const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"v\":1",
    "\"v\":",
    "\"cmd\":",
    "\"status\"",
    "\"classes\"",
    "\"conns\"",
    "\"reload\"",
    "\"set\"",
    "\"move\"",
    "\"stop\"",
    "\"explain\"",
    "\"dry_run\"",
    "\"metrics\"",
    "\"openmetrics\":",
    "\"pid\":",
    "\"to\":",
    "\"proto\":",
    "\"config\":",
    "\"class\":",
    "\"egress\":",
    "\"ingress\":",
    "\"priority\":",
    "\"conn\":",
    "\"keep\":",
    "true",
    "null",
    "\"",
    "\\u0000",
    "\\ud800",
    "\\",
    "1e999",
    "-0",
    "\n",
];

/// A JSON value of any type, at the edges of each.
fn value(rng: &mut Rng, depth: u32) -> String {
    match rng.below(if depth > 0 { 8 } else { 6 }) {
        0 => rng.pick(crate::rng::NUMBERS).to_string(),
        1 => rng.pick(&["true", "false", "null"]).to_string(),
        2 | 3 => format!(
            "\"{}\"",
            rng.pick(&[
                "bulk",
                "web",
                "10mbit",
                "5mbit:20mbit",
                ":",
                "0",
                "1e15",
                "999999999999999:1",
                "\\u0000",
                "é",
                "",
                "abcd",
                "198.18.0.2:443",
                "[fd00::2]:443",
                "tcp",
                "/etc/shaper/shaper.toml"
            ])
        ),
        4 => format!("{}.{}", rng.below(1000), rng.below(1000)),
        5 => format!("\"{}\"", "x".repeat(rng.below(300))),
        6 => format!("[{}]", (0..rng.below(3)).map(|_| value(rng, depth - 1)).collect::<Vec<_>>().join(",")),
        _ => object(rng, depth - 1),
    }
}

fn object(rng: &mut Rng, depth: u32) -> String {
    const KEYS: &[&str] = &[
        "v",
        "cmd",
        "class",
        "egress",
        "ingress",
        "priority",
        "conn",
        "keep",
        "pid",
        "to",
        "proto",
        "config",
        "user",
        "command",
        "sort",
        "limit",
        "n",
        "openmetrics",
        "extra",
    ];
    let mut fields = Vec::new();
    if !rng.one_in(8) {
        fields.push(format!(
            "\"v\":{}",
            rng.pick(&["1", "1", "1", "2", "0", "\"1\"", "1.0", "-1", "18446744073709551616"])
        ));
    }
    if !rng.one_in(8) {
        fields.push(format!(
            "\"cmd\":\"{}\"",
            rng.pick(&[
                "status", "classes", "conns", "conns", "top", "reload", "set", "set", "move", "stop",
                "explain", "dry_run", "metrics", "Status", "",
            ])
        ));
    }
    for _ in 0..rng.below(4) {
        fields.push(format!("\"{}\":{}", rng.pick(KEYS), value(rng, depth)));
    }
    // Keys in any order, sometimes twice.
    for i in (1..fields.len()).rev() {
        fields.swap(i, rng.below(i + 1));
    }
    format!("{{{}}}", fields.join(","))
}

impl Target for Control {
    fn name(&self) -> &'static str {
        "control"
    }

    fn dictionary(&self) -> &'static [&'static str] {
        DICTIONARY
    }

    fn max_len(&self) -> usize {
        shaper_user::control::protocol::MAX_REQUEST_BYTES
    }

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut line = object(rng, 2).into_bytes();
        if rng.one_in(2) {
            line.push(b'\n');
        }
        line
    }

    fn run(&mut self, input: &[u8]) -> bool {
        if Rng::from_bytes(input).one_in(SOCKET_EVERY) {
            self.through_socket(input);
        }
        match decode(input) {
            Ok(command) => {
                check_round_trip(&command);
                if let Command::Set(set) = &command {
                    // As `shaper set` reads RATE[:CEIL]: any text, an error or a rate in range.
                    for text in [&set.egress, &set.ingress].into_iter().flatten() {
                        for part in text.split(':') {
                            if let Ok(bps) = units::parse_rate(part.trim()) {
                                assert!(bps <= units::MAX_RATE_BPS, "{part:?} parsed as {bps}");
                            }
                        }
                    }
                }
                true
            }
            Err(reply) => {
                check_reply(&reply);
                false
            }
        }
    }
}

/// A command sent as the client sends it decodes to itself.
fn check_round_trip(command: &Command) {
    let line = serde_json::to_vec(&Request::new(command.clone()))
        .unwrap_or_else(|e| panic!("{command:?} does not encode: {e}"));
    match decode(&line) {
        Ok(again) => assert_eq!(&again, command, "{command:?} comes back as {again:?}"),
        Err(reply) => {
            panic!("{command:?} encoded as {} is refused: {reply:?}", String::from_utf8_lossy(&line))
        }
    }
}

/// An error reply is one JSON line the client can read back.
fn check_reply(reply: &Reply) {
    assert!(!reply.ok && reply.error.as_deref().is_some_and(|e| !e.is_empty()), "{reply:?}");
    let line = serde_json::to_string(reply).unwrap_or_else(|e| panic!("{reply:?} does not encode: {e}"));
    assert!(!line.contains('\n'), "a reply spans lines: {line}");
    let back: Reply = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line} does not decode: {e}"));
    assert_eq!(back.error, reply.error);
}
