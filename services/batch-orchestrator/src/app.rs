//! Building the service from its configuration, and running it until a signal stops it.

use std::sync::Arc;
use std::time::Duration;

use outbox::{Inbox, Outbox};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use sea_orm_migration::MigratorTrait;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::Migrator;
use crate::http::{AppState, app};

/// Why the service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// Migrations are missing.
    #[error(
        "the database is not migrated ({0} pending): run `batch-orchestrator migrate up` or set BATCH_ORCHESTRATOR_SERVICE_MIGRATE_ON_START=true"
    )]
    NotMigrated(usize),
    /// The outbox could not be built or stopped.
    #[error("outbox error: {0}")]
    Outbox(#[from] outbox_core::OutboxError),
    /// Kafka topics could not be created.
    #[error("kafka error: {0}")]
    Kafka(String),
    /// The listening socket failed.
    #[error("http server error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<outbox::Error> for ServiceError {
    fn from(error: outbox::Error) -> Self {
        Self::Outbox(error.into())
    }
}

/// Connects to the database named by the configuration.
pub async fn connect(config: &Config) -> Result<DatabaseConnection, ServiceError> {
    let mut options = ConnectOptions::new(config.database_url.clone());
    options
        .max_connections(16)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Ok(Database::connect(options).await?)
}

/// Fails unless every migration has been applied.
pub async fn require_migrated(db: &DatabaseConnection) -> Result<(), ServiceError> {
    let pending = Migrator::get_pending_migrations(db).await?.len();
    if pending > 0 {
        return Err(ServiceError::NotMigrated(pending));
    }
    Ok(())
}

/// Creates, when missing, every topic the service publishes and consumes, under the configured
/// prefix (3 partitions, replication factor 1).
pub async fn create_topics(config: &Config) -> Result<(), ServiceError> {
    let mut admin_config = rdkafka::ClientConfig::new();
    admin_config.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    // The security settings (TLS, SASL) an admin client needs, as the consumer has them.
    for (key, value) in &config.consumer.properties {
        if ["security.", "ssl.", "sasl."]
            .iter()
            .any(|p| key.starts_with(p))
        {
            admin_config.set(key, value);
        }
    }
    let admin: AdminClient<DefaultClientContext> = admin_config
        .create()
        .map_err(|e| ServiceError::Kafka(e.to_string()))?;
    let mut names: Vec<String> = crate::events::PUBLISHED_TOPICS
        .iter()
        .chain(crate::events::CONSUMED_TOPICS.iter())
        .map(|t| config.topic(t))
        .collect();
    names.sort();
    names.dedup();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, 3, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|e| ServiceError::Kafka(e.to_string()))?;
    for result in results {
        match result {
            Ok(topic) => info!(topic, "kafka topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(ServiceError::Kafka(format!(
                    "cannot create {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Builds the outbox (relay not started) and the routes' state.
pub fn build(config: &Config, db: DatabaseConnection) -> Result<AppState, ServiceError> {
    let outbox = Outbox::builder(db)
        .kafka(config.kafka.clone())
        .settings(config.relay.clone())
        .build()?;
    Ok(AppState {
        outbox,
        metrics: crate::metrics::handle(),
        topic_prefix: config.topic_prefix.clone(),
        max_essays: config.max_essays,
        max_request_bytes: config.max_request_bytes,
        consumers: None,
    })
}

/// The service with its relay and its inbox running.
#[derive(Clone)]
pub struct Running {
    /// The routes' state (its `consumers` report the inbox).
    pub state: AppState,
    /// The inbox consuming the service's topics.
    pub inbox: Inbox,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

/// Builds the service on a migrated database and starts the relay, then the inbox with the
/// handlers of [`handlers`](crate::consumers::handlers) (consumer group and client id from the
/// configuration).
pub fn start(config: &Config, db: DatabaseConnection) -> Result<Running, ServiceError> {
    let mut state = build(config, db)?;
    state.outbox.start()?;
    let mut inbox = state
        .outbox
        .inbox(config.consumer.clone())
        .settings(config.inbox.clone());
    for consumer in crate::consumers::handlers(config) {
        info!(consumer = consumer.name, topics = ?consumer.topics, group_id = %config.consumer.group_id, "consumer configured");
        inbox = inbox.shared_handler(consumer.name, consumer.topics, consumer.handler);
    }
    let inbox = match inbox.start() {
        Ok(inbox) => inbox,
        Err(e) => {
            // Nothing was consumed; the relay stops so the process can exit cleanly.
            let outbox = state.outbox.clone();
            tokio::spawn(async move { outbox.stop().await });
            return Err(e.into());
        }
    };
    state.consumers = Some(Arc::new(inbox.clone()));
    Ok(Running { state, inbox })
}

impl Running {
    /// Stops the inbox (the batch in flight applied and its offsets committed), then the relay
    /// (the events of that batch included: in-flight sends acknowledged, producer flushed).
    pub async fn stop(&self) -> Result<(), ServiceError> {
        let inbox = self.inbox.stop().await;
        if let Err(e) = &inbox {
            warn!(error = %e, "the inbox did not stop cleanly; unapplied messages will be delivered again");
        }
        if let Err(e) = self.state.outbox.stop().await {
            warn!(error = %e, "the relay did not stop cleanly; unsent events stay in the outbox");
            return Err(e.into());
        }
        Ok(inbox?)
    }
}

/// Runs the service: migrates and creates topics when configured, starts the relay and the
/// inbox, serves HTTP until SIGTERM or ctrl-c, then drains requests, stops the inbox and then
/// the relay.
pub async fn serve(config: Config) -> Result<(), ServiceError> {
    let db = connect(&config).await?;
    if config.migrate_on_start {
        Migrator::up(&db, None).await?;
        info!("migrations applied");
    }
    require_migrated(&db).await?;
    if config.create_topics {
        create_topics(&config).await?;
    }
    let running = start(&config, db)?;

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.http_port)).await?;
    info!(port = config.http_port, address = %listener.local_addr()?, "batch orchestrator listening");
    axum::serve(listener, app(running.state.clone()))
        .with_graceful_shutdown(outbox_cli::relay::shutdown_signal())
        .await?;

    running.stop().await?;
    info!("batch orchestrator stopped");
    Ok(())
}
