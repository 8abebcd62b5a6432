//! Where the cluster's Redis is: one fixed address (`redis://…`), or the primary that Redis Sentinel names
//! (`redis+sentinel://…`), followed through failovers.
//!
//! ```text
//! redis+sentinel://[[user]:password@]host:port[,host:port…]/<master name>[/<db>]
//! ```
//!
//! The hosts are the sentinels (asked without credentials); the credentials and the database are the data nodes'.
//! The handle asks the sentinels which server is the primary (`SENTINEL get-master-addr-by-name`) when it connects,
//! then again every [`Options::poll_interval`](crate::Options::poll_interval). When the answer changes (a failover),
//! every connection of the handle moves to the new primary: the ones that talk to it through [`Conn`] on their next
//! command, the blocking one and the subscription the next time they connect (a killed primary drops them at once).
//!
//! Not `redis::sentinel`'s clients: they hand out a client (or a connection) for the primary of the moment, while the
//! cluster keeps long-lived reconnecting connections that must follow the primary by themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{Client, Cmd, Pipeline, RedisFuture, Value};

use crate::types::{Error, Result};

const SCHEME: &str = "redis+sentinel://";

/// The sentinels of a `redis+sentinel://` URL and what to ask them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sentinels {
    /// `host:port` of each sentinel, in the order asked.
    hosts: Vec<String>,
    /// The name the sentinels monitor the primary by.
    master: String,
    /// `user:password@` for the data nodes, or empty.
    auth: String,
    db: i64,
}

impl Sentinels {
    fn parse(url: &str) -> Option<Sentinels> {
        let rest = url.strip_prefix(SCHEME)?;
        let (authority, path) = rest.split_once('/')?;
        let (auth, hosts) = match authority.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), authority),
        };
        let hosts: Vec<String> = hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(str::to_owned)
            .collect();
        let mut parts = path.trim_end_matches('/').splitn(2, '/');
        let master = parts.next().filter(|master| !master.is_empty())?.to_owned();
        let db = match parts.next() {
            Some(db) => db.parse().ok()?,
            None => 0,
        };
        (!hosts.is_empty()).then_some(Sentinels {
            hosts,
            master,
            auth,
            db,
        })
    }

    /// A client for the data node at `host:port`.
    fn client(&self, host: &str, port: u16) -> redis::RedisResult<Client> {
        Client::open(format!("redis://{}{host}:{port}/{}", self.auth, self.db))
    }

    /// Asks the sentinels, in order, for the primary's address; the first that knows it answers.
    async fn primary(
        &self,
        asked: &mut Vec<Option<MultiplexedConnection>>,
        timeout: Duration,
    ) -> Option<(String, u16)> {
        asked.resize(self.hosts.len(), None);
        for (host, slot) in self.hosts.iter().zip(asked.iter_mut()) {
            if slot.is_none() {
                let Ok(client) = Client::open(format!("redis://{host}/")) else {
                    continue;
                };
                let connected = tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await;
                *slot = connected.ok().and_then(|connected| connected.ok());
            }
            let Some(conn) = slot.as_mut() else {
                continue;
            };
            let mut ask = redis::cmd("SENTINEL");
            ask.arg("get-master-addr-by-name").arg(&self.master);
            match tokio::time::timeout(timeout, ask.query_async::<Option<(String, u16)>>(conn)).await {
                Ok(Ok(Some(address))) => return Some(address),
                Ok(Ok(None)) => {}
                _ => *slot = None,
            }
        }
        None
    }
}

/// The Redis a cluster handle talks to, and which server that is now.
pub(crate) struct Endpoint {
    sentinels: Option<Sentinels>,
    /// The primary's client, and how many times it changed (each connection remembers the version it was made for).
    current: RwLock<(Client, (String, u16))>,
    version: AtomicU64,
}

impl Endpoint {
    /// The Redis at `url`; for a sentinel URL, the primary the sentinels name now, followed from then on by a task
    /// that lives as long as the endpoint.
    pub(crate) async fn open(url: &str, poll: Duration, timeout: Duration) -> Result<Arc<Endpoint>> {
        let Some(sentinels) = Sentinels::parse(url) else {
            if url.starts_with(SCHEME) {
                return Err(Error::Malformed(
                    "a sentinel URL is redis+sentinel://[[user]:password@]host:port[,host:port…]/<master>[/<db>]"
                        .to_owned(),
                ));
            }
            let client = Client::open(url)?;
            return Ok(Arc::new(Endpoint {
                sentinels: None,
                current: RwLock::new((client, (String::new(), 0))),
                version: AtomicU64::new(0),
            }));
        };
        let mut asked = Vec::new();
        let Some((host, port)) = sentinels.primary(&mut asked, timeout).await else {
            return Err(Error::Malformed(format!(
                "no sentinel of {} names a primary for {:?}",
                sentinels.hosts.join(","),
                sentinels.master
            )));
        };
        let client = sentinels.client(&host, port)?;
        tracing::info!(
            master = sentinels.master,
            host,
            port,
            "redis sentinel names the primary"
        );
        let endpoint = Arc::new(Endpoint {
            sentinels: Some(sentinels),
            current: RwLock::new((client, (host, port))),
            version: AtomicU64::new(0),
        });
        tokio::spawn(follow(Arc::downgrade(&endpoint), asked, poll, timeout));
        Ok(endpoint)
    }

    /// A client for the primary as far as this endpoint knows now.
    pub(crate) fn client(&self) -> Client {
        self.current.read().0.clone()
    }

    /// Changes every time the primary does.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}

/// Asks the sentinels every `poll` which server is the primary, until the endpoint is dropped.
async fn follow(
    endpoint: Weak<Endpoint>,
    mut asked: Vec<Option<MultiplexedConnection>>,
    poll: Duration,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(poll).await;
        let Some(endpoint) = endpoint.upgrade() else {
            return;
        };
        let Some(sentinels) = &endpoint.sentinels else {
            return;
        };
        let Some(address) = sentinels.primary(&mut asked, timeout).await else {
            tracing::debug!(master = sentinels.master, "no sentinel answered");
            continue;
        };
        if endpoint.current.read().1 == address {
            continue;
        }
        match sentinels.client(&address.0, address.1) {
            Ok(client) => {
                let previous = std::mem::replace(&mut *endpoint.current.write(), (client, address.clone()));
                endpoint.version.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    master = sentinels.master,
                    from = format!("{}:{}", previous.1 .0, previous.1 .1),
                    to = format!("{}:{}", address.0, address.1),
                    "redis failed over: moving to the new primary"
                );
            }
            Err(error) => tracing::warn!(master = sentinels.master, %error, "the new primary's address is unusable"),
        }
    }
}

/// A reconnecting connection to the endpoint's primary: a [`ConnectionManager`] that is replaced by one for the new
/// primary when the endpoint's primary changes. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub(crate) struct Conn {
    endpoint: Arc<Endpoint>,
    config: ConnectionManagerConfig,
    current: Arc<Mutex<(u64, ConnectionManager)>>,
}

impl Conn {
    /// Connects to the primary now (an error if it cannot be reached).
    pub(crate) async fn connect(endpoint: Arc<Endpoint>, config: ConnectionManagerConfig) -> Result<Conn> {
        let version = endpoint.version();
        let manager = ConnectionManager::new_with_config(endpoint.client(), config.clone()).await?;
        Ok(Conn {
            endpoint,
            config,
            current: Arc::new(Mutex::new((version, manager))),
        })
    }

    /// The connection to use now: the one made for the current primary.
    fn manager(&self) -> ConnectionManager {
        let version = self.endpoint.version();
        let mut current = self.current.lock();
        if current.0 != version {
            // Lazy: connects on its first command, which is the caller's, outside this lock.
            match ConnectionManager::new_lazy_with_config(self.endpoint.client(), self.config.clone()) {
                Ok(manager) => *current = (version, manager),
                Err(error) => tracing::warn!(%error, "cannot make a connection to the new primary"),
            }
        }
        current.1.clone()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut manager = self.manager();
        Box::pin(async move { manager.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut manager = self.manager();
        Box::pin(async move { manager.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.current.lock().1.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::Sentinels;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_the_database() {
        assert_eq!(
            Sentinels::parse("redis+sentinel://h1:26379,h2:26380/mymaster/2"),
            Some(Sentinels {
                hosts: vec!["h1:26379".into(), "h2:26380".into()],
                master: "mymaster".into(),
                auth: String::new(),
                db: 2,
            })
        );
        let with_auth = Sentinels::parse("redis+sentinel://:secret@h1:26379/m").unwrap();
        assert_eq!((with_auth.auth.as_str(), with_auth.db), (":secret@", 0));
        for bad in [
            "redis://h1:6379/",
            "redis+sentinel://h1:26379/",
            "redis+sentinel:///m",
            "redis+sentinel://h1:26379",
            "redis+sentinel://h1:26379/m/x",
        ] {
            assert_eq!(Sentinels::parse(bad), None, "{bad}");
        }
    }
}
