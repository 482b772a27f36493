//! A token service for Distribution's `auth: token` (the Docker registry token protocol), for
//! the bearer-auth registry tests. No Debian or PyPI package ships one, so this is the smallest
//! honest one: it is the *registry's* peer, not taba's, and taba's client meets it only
//! through the real challenge flow (registry 401 with `WWW-Authenticate: Bearer realm=...,
//! service=..., scope=...` -> GET realm with basic credentials -> a JWT -> the request again
//! with `Authorization: Bearer`).
//!
//! It issues ES256 JWTs signed with a P-256 key whose self-signed certificate is the
//! registry's `rootcertbundle`; each token carries its certificate in `x5c`, which the registry
//! checks against that bundle before it verifies the signature, the issuer, the audience
//! (`service`), the validity times and the granted `access`.
//!
//! Policy: user `alice` with the right password may pull everything and push only to
//! repositories under `alice/`; anyone else with no credentials gets a token granting nothing;
//! a wrong password gets 401.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The issuer and service names the registry is configured with.
pub const ISSUER: &str = "taba-test-token-issuer";
pub const SERVICE: &str = "taba-test-registry";

/// A running token service.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`: the registry's `realm`.
    pub realm: String,
    /// The PEM certificate the registry trusts (`rootcertbundle`).
    pub root_cert: PathBuf,
    /// One line per token request: `user-agent user scope -> granted`.
    pub log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
}

impl TokenServer {
    /// Starts on a free loopback port; writes its certificate under `dir`.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let rc_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["taba-test-token".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&rc_key).unwrap();
        let root_cert = dir.join("token-root.pem");
        std::fs::write(&root_cert, cert.pem()).unwrap();
        let signer = Arc::new(Signer {
            key,
            cert_der: cert.der().to_vec(),
            user: user.into(),
            password: password.into(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(600) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        serve(c, &signer, &l);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TokenServer {
            realm,
            root_cert,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Token requests so far from clients whose user agent starts with `agent`.
    pub fn requests_from(&self, agent: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(agent))
            .cloned()
            .collect()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one HTTP request on `c`.
fn serve(c: TcpStream, signer: &Signer, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let (mut auth, mut agent) = (None, String::new());
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((&h, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => auth = Some(value.trim().to_string()),
            "user-agent" => agent = value.trim().to_string(),
            _ => {}
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut scopes = Vec::new();
    let mut service = String::new();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "scope" => scopes.push(percent_decode(v)),
            "service" => service = percent_decode(v),
            _ => {}
        }
    }
    let user = match auth.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
        None => None,
        Some(b) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded).into_owned();
            match text.split_once(':') {
                Some((u, p)) if u == signer.user && p == signer.password => Some(u.to_string()),
                _ => {
                    log.lock().unwrap().push(format!("{agent} refused"));
                    respond(
                        &c,
                        "401 Unauthorized",
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user name or password"}]}"#,
                    );
                    return;
                }
            }
        }
    };
    let mut access = Vec::new();
    for scope in &scopes {
        // repository:NAME:ACTIONS (NAME may hold ':' only in a host:port, which it does not here)
        let mut parts = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| match (&user, *a) {
                (Some(_), "pull") => true,
                (Some(u), "push") => name.starts_with(&format!("{u}/")),
                _ => false,
            })
            .collect();
        access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
    }
    log.lock().unwrap().push(format!(
        "{agent} {} {} -> {}",
        user.as_deref().unwrap_or("-"),
        scopes.join(" "),
        serde_json::to_string(&access).unwrap()
    ));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user.clone().unwrap_or_default(), "aud": service,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", scopes.len()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = signer.key.sign(&rng, signing_input.as_bytes()).unwrap();
    let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
    respond(&c, "200 OK", &body.to_string());
}

fn respond(mut c: &TcpStream, status: &str, body: &str) {
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.flush();
}
