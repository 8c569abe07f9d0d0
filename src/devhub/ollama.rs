//! A stand-in Ollama server for the tests and the demo: a small real HTTP/1.1 server on
//! loopback that speaks the part of Ollama's protocol the bundled `ollama` agent uses —
//! `POST /api/chat` answered with streamed NDJSON chunks (chunked transfer encoding, as
//! Ollama does) and `GET /api/tags` — with a [`OllamaBehaviour`] that can be changed while it
//! runs, and a log of every request. One thread accepts, one thread per connection; one
//! request per connection (`Connection: close`).
//!
//! The reply is [`StandinOllama::REPLY`] (or the text set with
//! [`StandinOllama::set_reply`]) cut into word-sized chunks; `prompt_eval_count` is the
//! number of words in the request's messages and `eval_count` the number of chunks. A model
//! other than the known ones is answered `404 {"error":"model 'x' not found"}` whatever the
//! behaviour.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// How the stand-in answers `POST /api/chat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OllamaBehaviour {
    /// The reply, streamed.
    Reply,
    /// `500 {"error": "internal error"}` to every chat request.
    Http500,
    /// `500` to the first `n` chat requests, then [`OllamaBehaviour::Reply`].
    Http500First(usize),
    /// Half the reply's chunks, then the connection is closed (no last chunk).
    CutMidStream,
    /// The reply with this delay before each chunk.
    Slow(Duration),
    /// An `{"error": …}` line after half the reply.
    ErrorMidStream(String),
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct OllamaRequest {
    pub method: String,
    pub path: String,
    /// The body parsed as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

struct Shared {
    behaviour: Mutex<OllamaBehaviour>,
    reply: Mutex<String>,
    models: Mutex<Vec<String>>,
    requests: Mutex<Vec<OllamaRequest>>,
    chats: Mutex<usize>,
    stop: AtomicBool,
}

/// A running stand-in; stopped when dropped.
pub struct StandinOllama {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StandinOllama {
    /// The model it knows by default.
    pub const MODEL: &'static str = "standin-coder:7b";
    /// The text of its answers by default.
    pub const REPLY: &'static str = "Here is the plan. First, read the task carefully and find the files it names. Second, make the smallest change that does what the task asks, and keep the style of the code around it. Third, run the tests, and if one fails, read its message, fix the cause and run them again. Finally, write down what was changed and why, so that the next person can follow it. That is all: the change is small, tested and explained.";

    /// Starts it on `127.0.0.1:0`.
    pub fn start(behaviour: OllamaBehaviour) -> std::io::Result<StandinOllama> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            reply: Mutex::new(Self::REPLY.to_string()),
            models: Mutex::new(vec![Self::MODEL.to_string()]),
            requests: Mutex::new(Vec::new()),
            chats: Mutex::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("standin-ollama".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || serve(conn, &s));
                }
            })?;
        Ok(StandinOllama {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as the hub gives `selected_endpoint`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_behaviour(&self, behaviour: OllamaBehaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    pub fn set_reply(&self, text: &str) {
        *lock(&self.shared.reply) = text.to_string();
    }

    /// The models it knows (and lists in `/api/tags`).
    pub fn set_models(&self, models: &[&str]) {
        *lock(&self.shared.models) = models.iter().map(|m| m.to_string()).collect();
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<OllamaRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The `POST /api/chat` requests so far.
    pub fn chats(&self) -> Vec<OllamaRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/api/chat")
            .collect()
    }
}

impl Drop for StandinOllama {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The reply cut into chunks of one word each (with the space before it).
fn chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch == ' ' && !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn serve(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length.min(64 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    lock(&shared.requests).push(OllamaRequest {
        method: method.clone(),
        path: path.clone(),
        body: body.clone(),
    });
    let models = lock(&shared.models).clone();
    match (method.as_str(), path.as_str()) {
        ("GET", "/api/tags") => {
            let list: Vec<Value> = models
                .iter()
                .map(|m| json!({"name": m, "model": m, "size": 4_000_000_000u64}))
                .collect();
            respond(&mut writer, 200, &json!({ "models": list }));
        }
        ("POST", "/api/chat") => chat(&mut writer, shared, &body, &models),
        _ => respond(&mut writer, 404, &json!({"error": "not found"})),
    }
    let _ = writer.shutdown(Shutdown::Both);
}

fn respond(w: &mut TcpStream, status: u16, body: &Value) {
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let _ = write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn chunk(w: &mut TcpStream, value: &Value) -> bool {
    let mut line = value.to_string();
    line.push('\n');
    write!(w, "{:x}\r\n{line}\r\n", line.len()).is_ok() && w.flush().is_ok()
}

fn chat(w: &mut TcpStream, shared: &Shared, body: &Value, models: &[String]) {
    let model = body["model"].as_str().unwrap_or("").to_string();
    let n = {
        let mut chats = lock(&shared.chats);
        *chats += 1;
        *chats
    };
    let behaviour = lock(&shared.behaviour).clone();
    let fail = match behaviour {
        OllamaBehaviour::Http500 => true,
        OllamaBehaviour::Http500First(k) => n <= k,
        _ => false,
    };
    if fail {
        respond(w, 500, &json!({"error": "internal error"}));
        return;
    }
    if !models.contains(&model) {
        respond(
            w,
            404,
            &json!({"error": format!("model '{model}' not found")}),
        );
        return;
    }
    let prompt_words: u64 = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| words(m["content"].as_str().unwrap_or("")))
        .sum();
    let reply = lock(&shared.reply).clone();
    let pieces = chunks(&reply);
    let _ = write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let half = pieces.len() / 2;
    for (i, piece) in pieces.iter().enumerate() {
        match &behaviour {
            OllamaBehaviour::CutMidStream if i == half => {
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            OllamaBehaviour::ErrorMidStream(e) if i == half => {
                chunk(w, &json!({ "error": e }));
                let _ = write!(w, "0\r\n\r\n");
                return;
            }
            OllamaBehaviour::Slow(d) => std::thread::sleep(*d),
            _ => {}
        }
        let c = json!({
            "model": model,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": piece},
            "done": false,
        });
        if !chunk(w, &c) {
            return;
        }
    }
    let last = json!({
        "model": model,
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": true,
        "done_reason": "stop",
        "total_duration": 1_000_000u64,
        "prompt_eval_count": prompt_words,
        "eval_count": pieces.len(),
    });
    chunk(w, &last);
    let _ = write!(w, "0\r\n\r\n");
    let _ = w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate_to_the_text() {
        let c = chunks(StandinOllama::REPLY);
        assert!(c.len() > 50);
        assert_eq!(c.concat(), StandinOllama::REPLY);
    }
}
