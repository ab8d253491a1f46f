//! AWS credentials rotated under continuous load, the two ways people rotate them: a Kubernetes
//! Secret volume's `..data` swap (all three parts change in one rename), and a script writing the
//! three files one after another. A Bedrock stand-in recomputes every request's SigV4 signature
//! with the secret that belongs to the access key id presented (and checks the session token is
//! that set's), so a request signed with a mixed set — the new id with the old secret — fails as
//! AWS fails it. (botocore checks the signatures independently in `tests/sdk/test_bedrock.py`.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_runtime_api::client::identity::Identity;
use http::Request;

use crate::common::*;
use crate::load::Load;

const ROTATIONS: usize = 10;
const INVOKE: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke";

/// The `n`th STS-style credential set: `ASIA…` id, 40-character secret, session token.
fn set(n: usize) -> (String, String, String) {
    let letters = |n: usize| {
        format!(
            "{}{}",
            (b'A' + (n / 26) as u8) as char,
            (b'A' + (n % 26) as u8) as char
        )
    };
    (
        format!("ASIAROTATEDKEYSETA{}", letters(n)),
        format!("rotatedSecret{n:02}{}", "Q".repeat(25)),
        format!("FwoGZXIvYXdzROTATEDsessionTOKEN{n:02}abcdef=="),
    )
}

/// The credential sets the stand-in knows (as IAM/STS does), and the id of the last request it
/// accepted.
#[derive(Default)]
struct Iam {
    sets: Mutex<HashMap<String, (String, String)>>,
    last_accepted: Mutex<String>,
    /// How long a set is good for after its first use (when sets expire at all).
    lifetime: Option<Duration>,
    first_used: Mutex<HashMap<String, Instant>>,
}

impl Iam {
    fn issue(&self, n: usize) -> (String, String, String) {
        let (id, secret, token) = set(n);
        self.sets
            .lock()
            .unwrap()
            .insert(id.clone(), (secret.clone(), token.clone()));
        (id, secret, token)
    }

    fn accepted(&self) -> String {
        self.last_accepted.lock().unwrap().clone()
    }

    /// Verify `seen` as Bedrock does: the signature recomputed with the presented id's secret and
    /// token must be the one sent. The refusal is AWS's exception name and message.
    fn verify(&self, seen: &Seen) -> Result<(), String> {
        let header = |name: &str| {
            seen.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let auth = header("authorization");
        let mut credential = "";
        let mut signed = "";
        for part in auth
            .strip_prefix("AWS4-HMAC-SHA256 ")
            .ok_or("IncompleteSignatureException")?
            .split(", ")
        {
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = v;
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed = v;
            }
        }
        let mut scope = credential.split('/');
        let (id, region) = (scope.next().unwrap_or(""), scope.nth(1).unwrap_or(""));
        let Some((secret, token)) = self.sets.lock().unwrap().get(id).cloned() else {
            return Err("UnrecognizedClientException: The security token included in the request is invalid.".into());
        };
        if header("x-amz-security-token") != token {
            return Err("UnrecognizedClientException: The security token included in the request is invalid (not the session's).".into());
        }
        let d = header("x-amz-date");
        let time = keyproxy::time::parse_timestamp(&format!(
            "{}-{}-{}T{}:{}:{}Z",
            &d[0..4],
            &d[4..6],
            &d[6..8],
            &d[9..11],
            &d[11..13],
            &d[13..15]
        ))
        .map_err(|e| format!("x-amz-date {d}: {e}"))?;
        let url = format!(
            "http://{}{}",
            header("host"),
            seen.uri.path_and_query().map_or("/", |pq| pq.as_str())
        );
        // The signed headers but those the signer adds itself.
        let headers: Vec<(&str, &str)> = signed
            .split(';')
            .filter(|h| !["host", "x-amz-date", "x-amz-security-token"].contains(h))
            .map(|h| (h, header(h)))
            .collect();
        let identity: Identity =
            aws_credential_types::Credentials::new(id, secret, Some(token), None, "iam").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("bedrock")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let request = SignableRequest::new(
            seen.method.as_str(),
            &url,
            headers.into_iter(),
            SignableBody::Bytes(&seen.body),
        )
        .unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        let expected = instructions
            .headers()
            .find(|(name, _)| *name == "authorization")
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        if expected != auth {
            return Err("InvalidSignatureException: The request signature we calculated does not match the signature you provided.".into());
        }
        if let Some(lifetime) = self.lifetime {
            let mut first_used = self.first_used.lock().unwrap();
            let since = first_used.entry(id.to_owned()).or_insert_with(Instant::now);
            if since.elapsed() > lifetime {
                return Err(
                    "ExpiredTokenException: The security token included in the request is expired"
                        .into(),
                );
            }
        }
        *self.last_accepted.lock().unwrap() = id.to_owned();
        Ok(())
    }
}

/// A Bedrock stand-in answering 200 to a request signed with a set `iam` knows, else 403.
async fn bedrock(iam: Arc<Iam>) -> StandIn {
    StandIn::recording(move |seen| match iam.verify(seen) {
        Ok(()) => (200, r#"{"content":[{"type":"text","text":"hi"}]}"#.into()),
        Err(why) => (403, serde_json::json!({ "message": why }).to_string()),
    })
    .await
}

/// keyproxy on `creds`' three files `id`, `secret` and `token`, under four clients' load.
async fn proxy_under_load(bedrock: &StandIn, dir: &Path, creds: &Path) -> (Proxy, Load) {
    let f = |n: &str| creds.join(n).display().to_string();
    let aws = format!(
        "access_key_id = {{ file = \"{}\" }}, secret_access_key = {{ file = \"{}\" }}, session_token = {{ file = \"{}\" }}",
        f("id"),
        f("secret"),
        f("token")
    );
    start_under_load(bedrock, dir, "", &aws).await
}

/// keyproxy with `server` settings and an aws table of `aws` (and the region), under four
/// clients' load.
async fn start_under_load(bedrock: &StandIn, dir: &Path, server: &str, aws: &str) -> (Proxy, Load) {
    let config = format!(
        "{server}\n[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"{}\"\n\
         key = {{ aws = {{ {aws}, region = \"eu-west-3\" }} }}\n",
        bedrock.url(),
    );
    let proxy = Proxy::start(&config, dir).await;
    let url = proxy.url(INVOKE);
    let load = Load::start(4, move || {
        Request::post(&url)
            .header("content-type", "application/json")
            .header("x-amzn-bedrock-trace", "ENABLED")
            .body(full(r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#))
            .unwrap()
    });
    (proxy, load)
}

/// Wait until requests are signed with `id` (the set just written is in service).
async fn in_service(iam: &Iam, id: &str) {
    eventually(&format!("{id} to sign requests"), || async {
        iam.accepted() == id
    })
    .await;
}

/// After the rotations: no request failed, each rotation was installed once by the file watch (never a partial
/// set in between), and no secret or token is in /status or /metrics.
async fn check_after(proxy: Proxy, load: Load, secrets: &[String], trigger: &str) {
    load.stop_expecting_no_failure(100).await;
    let m = metrics(&proxy).await;
    let applied = m
        .lines()
        .filter(|l| {
            l.starts_with("keyproxy_key_rotations_total{")
                && l.contains("result=\"applied\"")
                && l.contains(&format!("trigger=\"{trigger}\""))
                && l.contains("upstream=\"bedrock\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize;
    assert_eq!(applied, ROTATIONS, "one rotation per set written");
    let status = status(&proxy).await.to_string();
    for text in [&m, &status] {
        for s in secrets {
            assert!(!text.contains(s.as_str()), "a secret leaked");
        }
    }
    proxy.stop().await;
}

/// Write a file whole: a rename over it (the atomic way for one file).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The stand-in IAM and Bedrock, and a directory with an empty `aws` directory for the files.
async fn rotating() -> (Arc<Iam>, StandIn, tempfile::TempDir, std::path::PathBuf) {
    let iam = Arc::new(Iam::default());
    let bedrock = bedrock(Arc::clone(&iam)).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("aws");
    std::fs::create_dir(&creds).unwrap();
    (iam, bedrock, dir, creds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_credentials_swapped_by_a_kubernetes_secret_update_under_load_fail_no_request() {
    let (iam, bedrock, dir, creds) = rotating().await;
    let mut secrets = Vec::new();
    // The kubelet's layout: the files in a timestamped directory, `..data` pointing at it, and
    // each key a link through `..data`.
    let version = |n: usize, secrets: &mut Vec<String>| {
        let (id, secret, token) = iam.issue(n);
        let at = creds.join(format!("..2026_12_06_{n:02}"));
        std::fs::create_dir(&at).unwrap();
        for (name, text) in [("id", &id), ("secret", &secret), ("token", &token)] {
            std::fs::write(at.join(name), text).unwrap();
        }
        secrets.extend([secret, token]);
        (at, id)
    };
    let (mut current, first) = version(0, &mut secrets);
    std::os::unix::fs::symlink(current.file_name().unwrap(), creds.join("..data")).unwrap();
    for name in ["id", "secret", "token"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), creds.join(name)).unwrap();
    }
    let (proxy, load) = proxy_under_load(&bedrock, dir.path(), &creds).await;
    in_service(&iam, &first).await;
    for n in 1..=ROTATIONS {
        // The update: a new directory, a `..data_tmp` link renamed over `..data`, the old
        // directory removed.
        let (next, id) = version(n, &mut secrets);
        std::os::unix::fs::symlink(next.file_name().unwrap(), creds.join("..data_tmp")).unwrap();
        std::fs::rename(creds.join("..data_tmp"), creds.join("..data")).unwrap();
        std::fs::remove_dir_all(&current).unwrap();
        current = next;
        in_service(&iam, &id).await;
    }
    check_after(proxy, load, &secrets, "file").await;
}

/// How long the writer below takes between one file and the next: longer than the watcher's
/// coalescing of a burst of events (100 ms), as a script running a command per file is; well
/// within `key_settle` (1 s by default).
const BETWEEN_FILES: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_credentials_written_file_by_file_under_load_fail_no_request() {
    let (iam, bedrock, dir, creds) = rotating().await;
    let mut secrets = Vec::new();
    let (id, secret, token) = iam.issue(0);
    for (name, text) in [("id", &id), ("secret", &secret), ("token", &token)] {
        replace(&creds.join(name), text);
    }
    secrets.extend([secret, token]);
    let (proxy, load) = proxy_under_load(&bedrock, dir.path(), &creds).await;
    in_service(&iam, &id).await;
    for n in 1..=ROTATIONS {
        // What `aws configure export-credentials` piped into a script, or three `aws configure
        // set` calls, do: each file replaced in turn, a moment apart. (The pace of a writer, not
        // a wait for keyproxy.)
        let (id, secret, token) = iam.issue(n);
        replace(&creds.join("id"), &id);
        tokio::time::sleep(BETWEEN_FILES).await;
        replace(&creds.join("secret"), &secret);
        tokio::time::sleep(BETWEEN_FILES).await;
        replace(&creds.join("token"), &token);
        secrets.extend([secret, token]);
        in_service(&iam, &id).await;
    }
    check_after(proxy, load, &secrets, "file").await;
}

/// A `credential_process` printing the next set each time it runs, good for 4 seconds (what
/// `aws configure export-credentials --format process` prints for an SSO session).
const PROCESS: &str = r#"#!/bin/sh
dir=$(dirname "$0")
n=$(cat "$dir/counter")
echo $((n + 1)) > "$dir/counter"
expiration=$(date -u -d "+4 seconds" +%Y-%m-%dT%H:%M:%S.%3NZ)
sed "s/EXPIRATION/$expiration/" "$dir/set$n.json"
"#;

fn credential_process(dir: &Path, script: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("credential-process");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    format!("credential_process = [\"{}\"]", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_process_set_is_renewed_before_its_expiration_under_load() {
    let iam = Arc::new(Iam {
        lifetime: Some(Duration::from_secs(4)),
        ..Iam::default()
    });
    let bedrock = bedrock(Arc::clone(&iam)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for n in 0..=ROTATIONS + 5 {
        let (id, secret, token) = iam.issue(n);
        let printed = serde_json::json!({"Version": 1, "AccessKeyId": id, "SecretAccessKey": secret, "SessionToken": token, "Expiration": "EXPIRATION"});
        std::fs::write(dir.path().join(format!("set{n}.json")), printed.to_string()).unwrap();
        secrets.extend([secret, token]);
        ids.push(id);
    }
    std::fs::write(dir.path().join("counter"), "0").unwrap();
    let aws = credential_process(dir.path(), PROCESS);
    let (proxy, load) = start_under_load(
        &bedrock,
        dir.path(),
        "key_reload_interval = \"100ms\"",
        &aws,
    )
    .await;
    for id in &ids[..=ROTATIONS] {
        in_service(&iam, id).await;
    }
    // The expiry the command printed is the key's: in the gauge and in /status.
    let m = metrics(&proxy).await;
    let expiry: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("keyproxy_key_expiry_timestamp_seconds{upstream=\"bedrock\"} ")
        })
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now && expiry <= now + 4.5, "{expiry} vs {now}");
    let key = status(&proxy).await["upstreams"][0]["key"].clone();
    assert!(key["expires_at"].is_string(), "{key}");
    check_after(proxy, load, &secrets, "periodic").await;
}

#[tokio::test]
async fn a_credential_process_that_prints_something_else_is_named_without_repeating_it() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let aws = credential_process(
        dir.path(),
        "#!/bin/sh\necho '{\"AccessKeyId\": \"ASIAPRINTEDBUTNOTJSON\", \"oops\": '\n",
    );
    let config = format!(
        "[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"{}\"\nkey = {{ aws = {{ {aws}, region = \"eu-west-3\" }} }}\n",
        bedrock.url()
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (head, body) = send(Request::post(proxy.url(INVOKE)).body(full("{}")).unwrap()).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(head.status, 503, "{text}");
    assert!(
        text.contains("credential_process")
            && text.contains("did not print AWS's credential_process JSON"),
        "{text}"
    );
    assert!(!text.contains("PRINTEDBUTNOTJSON"), "{text}");
    assert!(bedrock.seen().is_empty());
    proxy.stop().await;
    // Both ways at once, or neither: refused where the config says so.
    let parse = |aws: &str| {
        let text = format!("[[upstreams]]\nname = \"b\"\nprovider = \"bedrock\"\nbase_url = \"https://bedrock-runtime.us-east-1.amazonaws.com\"\nkey = {{ aws = {{ {aws}, region = \"us-east-1\" }} }}\n");
        keyproxy::config::Config::parse(Path::new("k.toml"), &text)
            .map(|c| c.upstreams[0].key.to_string())
    };
    let both = parse(r#"credential_process = ["aws"], access_key_id = { env = "A" }"#)
        .unwrap_err()
        .to_string();
    assert!(both.contains("remove access_key_id"), "{both}");
    let neither = parse(r#"session_token = { env = "T" }"#)
        .unwrap_err()
        .to_string();
    assert!(
        neither.contains("needs access_key_id and secret_access_key"),
        "{neither}"
    );
    assert_eq!(
        parse(r#"credential_process = ["aws", "configure", "export-credentials", "--format", "process"]"#).unwrap(),
        "aws us-east-1 (credential_process command aws (4 arguments))"
    );
}
