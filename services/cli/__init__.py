"""`driftline`: the command people operate the platform with.

    driftline up [--stream FILE]… [--foreground]     start the local stack (if no Kafka/S3 is
                                                     configured) and the six services, supervised
    driftline status | down | logs SERVICE [-f]
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
"""
