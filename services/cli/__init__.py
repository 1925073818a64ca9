"""`driftline`: the command people operate the platform with.

    driftline up [--stream FILE]… [--foreground]     start the local stack (if no Kafka/S3 is
                                                     configured) and the services, supervised
    driftline status | down | logs SERVICE [--model M] [-f]
    driftline streams add FILE | list | show NAME
    driftline produce FILE --stream NAME [--rate R] [--label-delay S]
    driftline models list | show | lineage | promote | rollback | gate-log
    driftline datasets list | show ID | verify ID
    driftline train --stream NAME [--rows N] [--wait] · drift [MODEL] · predict MODEL --row JSON

Every verb has --help and --json. It talks to the services over gRPC, Kafka and S3 only (a
tool: it imports services.common and services.devstack, never a service). Where the platform
is comes from its state file, `$DRIFTLINE_HOME/platform.json` (default `.devstack/platform/`),
written by `driftline up`; any DRIFTLINE_* variable overrides it (DRIFTLINE_REGISTRY_ADDRESS,
DRIFTLINE_KAFKA_BOOTSTRAP, …, and DRIFTLINE_INGEST_ADDRESS / DRIFTLINE_MONITOR_ADDRESS, which
only the command reads). Stream schemas added with `streams add` live in `$DRIFTLINE_HOME/streams/`
next to the bundled ones in `config/streams/`.

Several streams run in one platform, each with its own model. Ingest, feature, registry, monitor
and the trainer run one process each for every stream; serving runs one process per model (as
in KServe), each with DRIFTLINE_MODEL_NAME set to it and its own gRPC and metrics port (the
default stream's on 50054 when that is free). `up` starts one for every stream in the streams
folder, `streams add` starts one for a new stream's model on a running platform, `status` shows
each by model, platform.json records where each model is served (under "serving"), and
`predict MODEL` asks that model's process. Without DRIFTLINE_KAFKA_BOOTSTRAP and
DRIFTLINE_S3_ENDPOINT, `up` starts the local stack (services.devstack) and `down` stops what
`up` started of it.
"""
