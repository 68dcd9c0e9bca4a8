//! Sending SMS. Production plugs in an operator's SMS gateway behind [`SmsSender`]; the local
//! implementation, [`FileSms`], appends each message to a file (`<data>/sms-outbox.txt`), which
//! stands in for the phone network here: it is the delivery channel, so it holds the code, and
//! the file is created readable by its owner only.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

pub trait SmsSender: Send + Sync {
    fn send(&self, phone: &str, text: &str) -> std::io::Result<()>;
}

pub struct FileSms {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileSms {
    pub fn new(path: PathBuf) -> Self {
        FileSms { path, lock: Mutex::new(()) }
    }

    /// The messages sent to `phone`, oldest first (for tests and the demo).
    pub fn messages_to(&self, phone: &str) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(p, _)| *p == phone)
            .map(|(_, m)| m.to_string())
            .collect()
    }
}

impl SmsSender for FileSms {
    fn send(&self, phone: &str, text: &str) -> std::io::Result<()> {
        let _guard = self.lock.lock().map_err(|_| std::io::Error::other("SMS outbox lock poisoned"))?;
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&self.path)?;
        // One write per message: with O_APPEND, writers in other processes or other instances
        // (sign-in codes and appointment notifications share the outbox) never interleave lines.
        let line = format!("{phone}\t{}\n", text.replace(['\n', '\t'], " "));
        file.write_all(line.as_bytes())?;
        file.sync_data()
    }
}
