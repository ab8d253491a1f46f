//! Continuous load for the tests that rotate or refresh a credential while requests flow: a few
//! clients sending back to back until stopped, every answer that is not a 200 kept to show.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::Request;

use crate::common::*;

pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<(u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` tasks, each sending `request()` and reading the answer whole, again and again.
    pub fn start(
        clients: usize,
        request: impl Fn() -> Request<TestBody> + Send + Sync + 'static,
    ) -> Load {
        let request = Arc::new(request);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, sent, failed, request) =
                    (stop.clone(), sent.clone(), failed.clone(), request.clone());
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::SeqCst) {
                        let resp = client.request(request()).await.unwrap();
                        let status = resp.status().as_u16();
                        let body = http_body_util::BodyExt::collect(resp.into_body())
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        sent.fetch_add(1, Ordering::SeqCst);
                        if status != 200 {
                            failed
                                .lock()
                                .unwrap()
                                .push((status, String::from_utf8_lossy(&body).into_owned()));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// Stop the clients (each finishes the request it is in) and assert that more than
    /// `min_sent` requests went and that every one was answered 200.
    pub async fn stop_expecting_no_failure(self, min_sent: usize) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let sent = self.sent.load(Ordering::SeqCst);
        let failed = self.failed.lock().unwrap().clone();
        assert!(sent > min_sent, "the load ran ({sent} requests)");
        assert!(
            failed.is_empty(),
            "{} of {sent} requests failed, the first: {:?}",
            failed.len(),
            failed.first()
        );
    }
}
