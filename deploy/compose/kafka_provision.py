"""One-shot init step of docker-compose.yml: every service's SCRAM user on the broker and the
ACLs of services/common/kafka_acls.py (what `driftline kafka acls` prints), applied as the admin.

The secure local stack provisions its broker the same way (services/devstack/kafka.py,
`Broker.provision`); this reuses it with the passwords compose passes in the environment
(KAFKA_<PRINCIPAL>_PASSWORD, one per principal) instead of the stack's generated ones. Upserting
users and creating ACLs is idempotent, so it runs again on every `docker compose up`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from services.common.kafka_acls import PRINCIPALS
from services.devstack.kafka import Broker


class ComposeBroker(Broker):
    def passwords(self) -> dict[str, str]:
        missing = [p for p in ("admin", *PRINCIPALS) if not os.environ.get(f"KAFKA_{p.upper()}_PASSWORD")]
        if missing:
            sys.exit(f"kafka-init: no password for {', '.join(missing)} (KAFKA_<PRINCIPAL>_PASSWORD)")
        return {p: os.environ[f"KAFKA_{p.upper()}_PASSWORD"] for p in ("admin", *PRINCIPALS)}

    @property
    def ca_file(self) -> Path:
        return Path("/run/secrets/ca.pem")


if __name__ == "__main__":
    grants = ComposeBroker(Path("/tmp"), 9092, secure=True, host="kafka").provision(
        os.environ.get("DRIFTLINE_TOPIC_PREFIX", ""), timeout=60)
    print(f"kafka-init: {len(PRINCIPALS)} SCRAM users and {len(grants)} ACL grants applied")
