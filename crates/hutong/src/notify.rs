//! The local delivery adapter for appointment notifications (engine `Notifier`): text messages go
//! to the same SMS outbox file the sign-in codes use (`<data>/sms-outbox.txt`, standing in for an
//! operator's SMS gateway), app messages to `<data>/app-outbox.txt` (standing in for the app push
//! service), one line per message, `address<TAB>text`. A deployment replaces this adapter with
//! its gateways; the engine side does not change.

use std::path::Path;

use auth::{FileSms, SmsSender};
use engine::{Channel, Notifier};

pub struct FileNotifier {
    sms: FileSms,
    app: FileSms,
}

impl FileNotifier {
    pub fn new(data: &Path) -> Self {
        FileNotifier { sms: FileSms::new(data.join("sms-outbox.txt")), app: FileSms::new(data.join("app-outbox.txt")) }
    }
}

impl Notifier for FileNotifier {
    fn send(&self, channel: Channel, address: &str, text: &str) -> std::io::Result<()> {
        match channel {
            Channel::Sms => self.sms.send(address, text),
            Channel::App => self.app.send(address, text),
        }
    }
}
