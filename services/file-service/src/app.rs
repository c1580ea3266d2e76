//! Building the service from its configuration, and running it until a signal stops it.

use std::sync::Arc;
use std::time::Duration;

use outbox::Outbox;
use outbox_di::OutboxModule;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use sea_orm_migration::MigratorTrait;
use shaku::HasComponent;
use tracing::{info, warn};

use crate::access::{BatchAccess, LocalOwnership, Orchestrator};
use crate::config::Config;
use crate::db::Migrator;
use crate::events::{
    FileEventWriter, OutboxFileEventWriter, OutboxFileEventWriterParameters, TOPICS,
};
use crate::http::{AppState, RequestLimits, app};
use crate::module::FileServiceModule;
use crate::processing::{ProcessingSettings, Processor};

/// Why the service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// Migrations are missing.
    #[error(
        "the database is not migrated ({0} pending): run `file-service migrate up` or set FILE_SERVICE_MIGRATE_ON_START=true"
    )]
    NotMigrated(usize),
    /// The outbox could not be built or stopped.
    #[error("outbox error: {0}")]
    Outbox(#[from] outbox_core::OutboxError),
    /// Kafka topics could not be created.
    #[error("kafka error: {0}")]
    Kafka(String),
    /// The Batch Orchestrator client could not be built.
    #[error("orchestrator client error: {0}")]
    Orchestrator(#[from] reqwest::Error),
    /// The outbox admin API could not be built.
    #[error("outbox admin api error: {0}")]
    Admin(#[from] outbox_cli::ops::OpsError),
    /// The listening socket failed.
    #[error("http server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Connects to the database named by the configuration.
pub async fn connect(config: &Config) -> Result<DatabaseConnection, ServiceError> {
    let mut options = ConnectOptions::new(config.database_url.clone());
    options
        // Each upload being processed holds one connection for its outcome transaction.
        .max_connections(16_u32.max(config.processing_concurrency as u32 + 8))
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

/// Creates the service's four topics when missing (3 partitions, replication factor 1).
pub async fn create_topics(config: &Config) -> Result<(), ServiceError> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .create()
        .map_err(|e| ServiceError::Kafka(e.to_string()))?;
    let names: Vec<String> = TOPICS
        .iter()
        .map(|t| format!("{}{t}", config.topic_prefix))
        .collect();
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

/// Wires the service: the outbox module and the service's module on top of it, batch access,
/// and the upload processor. The relay is not started.
pub fn build(config: &Config, db: DatabaseConnection) -> Result<AppState, ServiceError> {
    let builder = Outbox::builder(db.clone())
        .kafka(config.kafka.clone())
        .settings(config.relay.clone());
    let outbox = OutboxModule::from_builder(builder).map_err(outbox_core::OutboxError::from)?;
    let module = FileServiceModule::builder(Arc::new(outbox))
        .with_component_parameters::<OutboxFileEventWriter>(OutboxFileEventWriterParameters {
            topic_prefix: config.topic_prefix.clone(),
            max_event_bytes: config.max_event_bytes,
        })
        .build();
    let events: Arc<dyn FileEventWriter> = module.resolve();
    let outbox: Arc<Outbox> = module.resolve();
    let access: Arc<dyn BatchAccess> = match &config.orchestrator_url {
        Some(url) => Arc::new(Orchestrator::new(url.clone(), config.orchestrator_timeout)?),
        None => Arc::new(LocalOwnership::new(db.clone())),
    };
    let processor = Processor::start(
        db.clone(),
        events.clone(),
        outbox.clone(),
        ProcessingSettings {
            concurrency: config.processing_concurrency,
            max_attempts: config.max_processing_attempts,
            extract_limits: config.extract_limits,
            extract_program: config.extract_program.clone(),
        },
    );
    Ok(AppState {
        db,
        events,
        access,
        processor,
        outbox,
        metrics: crate::metrics::handle(),
        max_file_bytes: config.max_file_bytes,
        max_request_bytes: config.max_request_bytes,
        limits: RequestLimits {
            max_concurrent_uploads: config.max_concurrent_uploads,
            max_files_per_request: config.max_files_per_request,
            max_filename_bytes: config.max_filename_bytes,
            read_timeout: config.request_read_timeout,
        },
        upload_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads)),
    })
}

/// Runs the service: migrates when configured, starts the relay and the processor (queuing every
/// upload still pending), serves HTTP until SIGTERM or ctrl-c, then drains requests, finishes
/// the uploads being processed, and stops the relay (in-flight sends acknowledged, producer
/// flushed).
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
    let state = build(&config, db)?;
    state
        .outbox
        .start()
        .map_err(outbox_core::OutboxError::from)?;
    let recovered = state.processor.enqueue_pending(None).await?;
    if recovered > 0 {
        info!(
            uploads = recovered,
            "queued uploads left pending by an earlier run"
        );
    }

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.http_port)).await?;
    info!(port = config.http_port, address = %listener.local_addr()?, "file service listening");
    let processor = state.processor.clone();
    let outbox = state.outbox.clone();
    let admin = config.admin_token.is_some();
    let router = crate::admin::mount(
        app(state.clone()),
        "/admin/outbox",
        state.db.clone(),
        config.admin_token.clone(),
    )?;
    info!(admin_api = admin, "outbox admin API under /admin/outbox");
    axum::serve(listener, router)
        .with_graceful_shutdown(outbox_cli::relay::shutdown_signal())
        .await?;

    processor.stop().await;
    match outbox.stop().await.map_err(outbox_core::OutboxError::from) {
        Ok(()) => info!("file service stopped"),
        Err(e) => {
            warn!(error = %e, "the relay did not stop cleanly; unsent events stay in the outbox");
            return Err(e.into());
        }
    }
    Ok(())
}
