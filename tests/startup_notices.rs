//! Notices the backend sends while a client's session starts reach the client, as they do
//! when it connects to PostgreSQL directly (tokio-postgres's own `notices` test).

mod common;

use common::gateway::{
    connect_with_messages, create_app_database, runtime, start_gateway, within, Async,
    GatewayOptions, AGENT_TOKEN,
};
use common::{shared_pg, superuser_on, with_shared_pg};

/// The notices a client gets from connecting with `conn_str` and running one statement.
fn notices(conn_str: &str) -> Vec<String> {
    runtime().block_on(async {
        let (client, mut messages) = connect_with_messages(conn_str).await;
        client
            .batch_execute("DROP TABLE IF EXISTS no_such_table_here")
            .await
            .unwrap();
        drop(client);
        let mut got = Vec::new();
        while let Some(m) = within(10, "notices", messages.recv()).await {
            if let Async::Notice(n) = m {
                got.push(n);
            }
        }
        got
    })
}

#[test]
fn a_long_application_names_truncation_notice_reaches_the_client() {
    with_shared_pg(|c| create_app_database(c, "startup_notices"));
    let long = "x".repeat(65);
    let expected = [
        format!(
            "identifier \"{long}\" will be truncated to \"{}\"",
            &long[..63]
        ),
        "table \"no_such_table_here\" does not exist, skipping".to_owned(),
    ];
    let direct = superuser_on(shared_pg(), "startup_notices").conn_str();
    assert_eq!(
        notices(&format!("{direct} application_name={long}")),
        expected,
        "direct"
    );
    for mode in ["session", "transaction"] {
        let gw = start_gateway(
            shared_pg(),
            GatewayOptions {
                database: "startup_notices".into(),
                mode,
                cores: 1,
                ..GatewayOptions::default()
            },
        );
        let through = gw.conn_str(AGENT_TOKEN);
        assert_eq!(
            notices(&format!("{through} application_name={long}")),
            expected,
            "{mode}"
        );
    }
}
