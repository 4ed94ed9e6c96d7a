//! Reads the node's `/metrics` off the engine's thread, so a slow answer never stalls the packets.

use std::sync::mpsc::{Receiver, Sender, channel};

type Request = (String, Sender<Result<String, String>>);

/// A thread that fetches URLs one at a time.
#[derive(Debug)]
pub struct Scraper {
    requests: Sender<Request>,
}

impl Scraper {
    pub fn start() -> anyhow::Result<Self> {
        let (requests, rx) = channel::<Request>();
        std::thread::Builder::new()
            .name("loadtest-scrape".into())
            .spawn(move || serve(rx))?;
        Ok(Self { requests })
    }

    /// Starts fetching `url`; the answer arrives on the returned receiver.
    pub fn fetch(&self, url: &str) -> Receiver<Result<String, String>> {
        let (tx, rx) = channel();
        if let Err(e) = self.requests.send((url.to_string(), tx)) {
            let (tx, rx2) = channel();
            let _ = tx.send(Err(format!("scraper stopped: {e}")));
            return rx2;
        }
        rx
    }
}

fn serve(rx: Receiver<Request>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let http = reqwest::Client::new();
    while let Ok((url, reply)) = rx.recv() {
        let r = rt.block_on(async {
            let res = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("GET {url}: {}", res.status()));
            }
            res.text().await.map_err(|e| e.to_string())
        });
        let _ = reply.send(r);
    }
}
