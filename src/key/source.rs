//! Where a key comes from: an environment variable, a file, or a command's stdout (argv, no shell).
//! Reading returns the raw key minus one trailing newline; judging it is the lint's job.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::minted::MintedSource;
use super::Secret;

/// Larger than any real API key by far; a file bigger than this is not a key file.
const MAX_KEY_BYTES: u64 = 16 * 1024;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// `{ env = "VAR" }`, `{ file = "PATH" }` or `{ command = ["prog", "arg"] }` in the config.
/// Never shown whole: `Display` and `Debug` name a command's program and count its arguments
/// (they often carry tokens), and a config error never repeats a value that could be a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
    Command(Vec<String>),
    /// `{ aws = { access_key_id = …, secret_access_key = …, session_token = …, region = … } }`:
    /// AWS credentials for SigV4, each part a source of its own (see `aws`).
    Aws(Arc<super::aws::AwsSpec>),
    /// A token minted from a longer-lived secret and refreshed before it expires (`oauth2`,
    /// `azure_ad`, `google_service_account`): see `key::minted`.
    Minted(Arc<MintedSource>),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read key file {path}: {source}")]
    FileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is larger than {MAX_KEY_BYTES} bytes; it is not a key file")]
    FileTooLarge { path: PathBuf },
    #[error("command {program} could not be started: {source}")]
    CommandSpawn {
        program: String,
        source: std::io::Error,
    },
    #[error("command {program} failed ({status})")]
    CommandFailed { program: String, status: String },
    #[error("command {program} did not finish within {}s", COMMAND_TIMEOUT.as_secs())]
    CommandTimeout { program: String },
    #[error("command has an empty argv; write command = [\"program\", \"arg\", ...]")]
    CommandEmpty,
    #[error("the key from {0} is not valid UTF-8 text (a binary file?)")]
    NotUtf8(String),
    #[error("aws {part}: {cause}")]
    AwsPart {
        part: &'static str,
        cause: Box<KeyError>,
    },
    #[error("it did not print AWS's credential_process JSON ({{\"Version\": 1, \"AccessKeyId\": …, \"SecretAccessKey\": …, \"SessionToken\": …, \"Expiration\": …}})")]
    AwsProcessOutput,
    #[error("the aws table needs access_key_id and secret_access_key, or credential_process")]
    AwsIncomplete,
    #[error("an aws credential's parts are plain sources ({{ env }}, {{ file }} or {{ command }}), not another credential table (aws, oauth2, azure_ad, google_service_account)")]
    AwsNested,
    #[error("{0} mints tokens for an upstream; it cannot be read as a client or admin token")]
    Minted(String),
}

/// Relative paths in the config are relative to the config file's directory.
pub fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_owned();
    }
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_owned(),
    }
}

impl KeySource {
    /// Relative key-file paths are relative to the config file.
    pub fn resolved(self, config_path: &Path) -> KeySource {
        match self {
            KeySource::File(p) => KeySource::File(resolve(config_path, &p)),
            KeySource::Aws(spec) => KeySource::Aws(Arc::new(spec.resolved(config_path))),
            KeySource::Minted(m) => KeySource::Minted(Arc::new(m.resolved(config_path))),
            other => other,
        }
    }

    /// Read the key. Only a single trailing newline is removed (what `echo key > file` adds);
    /// judging what is left (empty, spaces, quotes...) is the lint's job.
    pub async fn read(&self) -> Result<Secret, KeyError> {
        let raw = match self {
            KeySource::Env(var) => match std::env::var(var) {
                Ok(v) => v.into_bytes(),
                Err(std::env::VarError::NotPresent) => return Err(KeyError::EnvUnset(var.clone())),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(KeyError::EnvNotUnicode(var.clone()))
                }
            },
            KeySource::File(path) => read_file(path)?,
            KeySource::Command(argv) => run_command(argv).await?,
            KeySource::Aws(spec) if spec.nested() => return Err(KeyError::AwsNested),
            // Boxed: the parts are read with this same function.
            KeySource::Aws(spec) => return Box::pin(spec.read()).await,
            // Its lifecycle mints it (`KeyLifecycle::refresh`); anything else reading it is a
            // client or admin token configured with a token credential.
            KeySource::Minted(m) => return Err(KeyError::Minted(m.to_string())),
        };
        let mut text = String::from_utf8(raw).map_err(|e| {
            let mut bytes = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            KeyError::NotUtf8(self.to_string())
        })?;
        trim_one_newline(&mut text);
        Ok(Secret::new(text))
    }
}

impl KeySource {
    /// The key files this source reads (watched for rotation): its own, or an aws table's parts'.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            KeySource::File(path) => vec![path.as_path()],
            KeySource::Aws(spec) => spec.files().collect(),
            _ => Vec::new(),
        }
    }

    /// Read again before the key it gave expires (an aws `credential_process`).
    pub fn renews_itself(&self) -> bool {
        matches!(self, KeySource::Aws(spec) if spec.renews_itself())
    }

    /// The token credential this source mints, if it is one.
    pub fn minted(&self) -> Option<&Arc<MintedSource>> {
        match self {
            KeySource::Minted(m) => Some(m),
            _ => None,
        }
    }

    /// A warning when a key file can be read by other users (group or world bits set).
    pub fn permission_warning(&self) -> Option<String> {
        if let KeySource::Aws(spec) = self {
            return spec.permission_warning();
        }
        #[cfg(unix)]
        if let KeySource::File(path) = self {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Some(format!(
                    "key file {} is readable by other users (mode {mode:04o}); run `chmod 600 {}` (on Kubernetes, set the Secret volume's defaultMode: 0400)",
                    path.display(),
                    path.display()
                ));
            }
        }
        None
    }
}

/// Replace a key file so that a crash at any moment leaves the old key or the new one, never a mix
/// or an empty file: a temporary file in the same directory, fsync, rename over, fsync the
/// directory. The file keeps its mode and (when permitted) its owner.
pub fn write_atomically(path: &Path, secret: &Secret) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.keyproxy-tmp"));
    let before = std::fs::metadata(path).ok();
    // Left over from a crash mid-write: it never held the only copy of anything.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&tmp)?;
        let mut text = zeroize::Zeroizing::new(String::with_capacity(secret.expose().len() + 1));
        text.push_str(secret.expose());
        text.push('\n');
        file.write_all(text.as_bytes())?;
        if let Some(before) = &before {
            file.set_permissions(before.permissions())?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                // Only root may give a file away; anyone else keeps their own ownership.
                let _ = std::os::unix::fs::fchown(&file, Some(before.uid()), Some(before.gid()));
            }
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Remove exactly one trailing `\n` or `\r\n` (what `echo key > file` or a pasted line adds).
pub fn trim_one_newline(text: &mut String) {
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let err = |source| KeyError::FileRead {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut buf = Vec::new();
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_KEY_BYTES {
        zeroize::Zeroize::zeroize(&mut buf);
        return Err(KeyError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    Ok(buf)
}

pub(super) async fn run_command(argv: &[String]) -> Result<Vec<u8>, KeyError> {
    let (program, args) = argv.split_first().ok_or(KeyError::CommandEmpty)?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| KeyError::CommandSpawn {
            program: program.clone(),
            source,
        })?;
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| KeyError::CommandTimeout {
            program: program.clone(),
        })?
        .map_err(|source| KeyError::CommandSpawn {
            program: program.clone(),
            source,
        })?;
    log_stderr(program, &output.stderr, &output.stdout);
    if !output.status.success() {
        let mut stdout = output.stdout;
        zeroize::Zeroize::zeroize(&mut stdout);
        return Err(KeyError::CommandFailed {
            program: program.clone(),
            status: output.status.to_string(),
        });
    }
    Ok(output.stdout)
}

/// A key command's stderr is its diagnosis, so it is logged — with whatever it printed on stdout
/// (the key) cut out, in case it echoes it.
fn log_stderr(program: &str, stderr: &[u8], stdout: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let key = String::from_utf8_lossy(stdout);
    let key = key.trim();
    let mut shown: String = if key.len() >= 4 {
        text.replace(key, "[key]")
    } else {
        text.to_owned()
    };
    if shown.len() > 500 {
        let cut = (0..=500)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    tracing::warn!(command = program, "key command wrote to stderr: {shown}");
}

impl fmt::Display for KeySource {
    /// `env OPENAI_API_KEY`, `file /run/secrets/openai`, `command op read ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(v) => write!(f, "env {v}"),
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::Command(argv) => match argv.split_first() {
                Some((program, [])) => write!(f, "command {program}"),
                Some((program, [_])) => write!(f, "command {program} (1 argument)"),
                Some((program, args)) => write!(f, "command {program} ({} arguments)", args.len()),
                None => f.write_str("command (empty)"),
            },
            KeySource::Aws(spec) => write!(f, "{spec}"),
            KeySource::Minted(m) => m.fmt(f),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySource({self})")
    }
}

/// What to write instead of a secret in the config; the value itself is never repeated.
const WRITE_A_SOURCE: &str = "write where keyproxy reads it from instead: { env = \"OPENAI_API_KEY\" } (an environment variable that holds it), { file = \"/run/secrets/openai\" } or { command = [\"op\", \"read\", \"op://vault/item/key\"] }";

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeySource, D::Error> {
        d.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = KeySource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key source: { env = \"VAR\" }, { file = \"PATH\" } or { command = [\"program\", \"arg\"] }")
    }

    /// `key = "…"`: most likely the secret itself, so it is refused without being repeated.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeySource, E> {
        if is_env_name(v) && v.contains('_') && v.bytes().all(|b| !b.is_ascii_lowercase()) {
            return Err(E::custom(format!(
                "a key source is a table: did you mean {{ env = \"{v}\" }}?"
            )));
        }
        Err(E::custom(format!(
            "a secret cannot be written into the config (it would be printed, copied and committed with it); {WRITE_A_SOURCE}"
        )))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeySource, A::Error> {
        let one_of = "write exactly one of env, file or command, e.g. { env = \"OPENAI_API_KEY\" } (or a credential table: aws, oauth2, azure_ad or google_service_account)";
        let Some(kind) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format!("an empty key source; {one_of}")));
        };
        let source = match kind.as_str() {
            "env" => {
                let name: String = map.next_value()?;
                if !is_env_name(&name) {
                    return Err(de::Error::custom(format!(
                        "env takes the name of an environment variable (letters, digits and '_'), and this value is not one; if it is the key itself, {WRITE_A_SOURCE}"
                    )));
                }
                KeySource::Env(name)
            }
            "file" => {
                let path: PathBuf = map.next_value()?;
                if looks_like_a_key(&path.to_string_lossy()) {
                    return Err(de::Error::custom(format!(
                        "file takes a path, and this value looks like a key itself; put the key in a file (chmod 600) and {WRITE_A_SOURCE}"
                    )));
                }
                KeySource::File(path)
            }
            "command" => KeySource::Command(map.next_value()?),
            "aws" => {
                let spec: super::aws::AwsSpec = map.next_value()?;
                if spec.nested() {
                    return Err(de::Error::custom(KeyError::AwsNested.to_string()));
                }
                if let Some(problem) = spec.incomplete() {
                    return Err(de::Error::custom(problem));
                }
                KeySource::Aws(Arc::new(spec))
            }
            kind if super::minted::KINDS.contains(&kind) => {
                KeySource::Minted(Arc::new(MintedSource::parse(kind, &mut map)?))
            }
            // The table's own key could be anything a person pasted: not repeated.
            _ => return Err(de::Error::custom(format!("unknown key source; {one_of}"))),
        };
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "a key source has one entry; {one_of}"
            )));
        }
        Ok(source)
    }
}

/// A portable environment variable name: letters, digits and `_`, not starting with a digit.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A "path" that starts like a provider key and has no path separator or extension.
fn looks_like_a_key(path: &str) -> bool {
    path.len() >= 20
        && !path.contains(['/', '.', '\\'])
        && crate::redact::KEY_PREFIXES
            .iter()
            .any(|p| path.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_trims_one_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "sk-abc\n").unwrap();
        let src = KeySource::File(p.clone());
        assert_eq!(src.read().await.unwrap().expose(), "sk-abc");
        std::fs::write(&p, " sk-abc \n\n").unwrap();
        assert_eq!(src.read().await.unwrap().expose(), " sk-abc \n");
        std::fs::write(&p, "sk-abc\r\n").unwrap();
        assert_eq!(src.read().await.unwrap().expose(), "sk-abc");
    }

    #[tokio::test]
    async fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let src = KeySource::File(p.clone());
        let e = src.read().await.unwrap_err().to_string();
        assert!(
            e.contains("cannot read key file") && e.contains("/k"),
            "{e}"
        );
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(
            src.read().await.unwrap().expose(),
            "",
            "empty is the lint's call"
        );
        std::fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(src.read().await, Err(KeyError::NotUtf8(_))));
        std::fs::write(&p, vec![b'a'; 20_000]).unwrap();
        assert!(matches!(
            src.read().await,
            Err(KeyError::FileTooLarge { .. })
        ));
        let d = KeySource::File(dir.path().to_owned());
        assert!(matches!(d.read().await, Err(KeyError::FileRead { .. })));
    }

    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn command_stderr_is_logged_without_the_key() {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            log_stderr(
                "vault-read",
                b"note: fetched sk-proj-SECRETsecret123456 from the vault",
                b"sk-proj-SECRETsecret123456\n",
            )
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("note: fetched [key] from the vault"),
            "{text}"
        );
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn group_or_world_readable_key_files_are_flagged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "sk-abc").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = KeySource::File(p.clone()).permission_warning().unwrap();
        assert!(
            warning.contains("0644") && warning.contains("chmod 600"),
            "{warning}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(KeySource::File(p).permission_warning(), None);
        assert_eq!(KeySource::Env("X".into()).permission_warning(), None);
    }

    #[tokio::test]
    async fn env_and_command() {
        let src = KeySource::Env("KEYPROXY_TEST_SURELY_UNSET_VAR".into());
        assert!(matches!(src.read().await, Err(KeyError::EnvUnset(_))));
        let cmd = KeySource::Command(vec!["echo".into(), "sk-from-cmd".into()]);
        assert_eq!(cmd.read().await.unwrap().expose(), "sk-from-cmd");
        let fails = KeySource::Command(vec!["false".into()]);
        assert!(matches!(
            fails.read().await,
            Err(KeyError::CommandFailed { .. })
        ));
        let missing = KeySource::Command(vec!["/nonexistent/prog".into()]);
        assert!(matches!(
            missing.read().await,
            Err(KeyError::CommandSpawn { .. })
        ));
        assert_eq!(cmd.to_string(), "command echo (1 argument)");
        assert_eq!(format!("{cmd:?}"), "KeySource(command echo (1 argument))");
    }
}
