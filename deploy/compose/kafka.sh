#!/bin/sh
# The broker of docker-compose.yml (apache/kafka image): SASL_SSL (SCRAM-SHA-512) for every
# client, the KRaft controller listener over mutual TLS, and the StandardAuthorizer denying what
# no ACL allows. SCRAM credentials live in the metadata log, which the controller must read before
# it can check one, so the broker authenticates to its own controller by its certificate
# (principal = the certificate's CN, `kafka`) and the admin's SCRAM credential is written when the
# storage is formatted; kafka_provision.py adds every service's user and ACLs after that. The
# configuration is written here rather than from the image's KAFKA_* variables because that path
# has no way to format with SCRAM credentials.
set -eu
secrets=/run/secrets
work=/tmp/driftline-kafka
: "${DRIFTLINE_KAFKA_ADMIN_PASSWORD:?the broker needs DRIFTLINE_KAFKA_ADMIN_PASSWORD}"
umask 077
mkdir -p "$work"
# Kafka's PEM keystore is the key and its certificate in one file.
cat "$secrets/kafka.key" "$secrets/kafka.pem" > "$work/keystore.pem"

cat > "$work/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@kafka:9093
listeners=$KAFKA_LISTENERS
advertised.listeners=$KAFKA_ADVERTISED_LISTENERS
listener.security.protocol.map=$KAFKA_LISTENER_SECURITY_PROTOCOL_MAP
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$DRIFTLINE_KAFKA_ADMIN_PASSWORD";
listener.name.host.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$work/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/ca.pem
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+),.*\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:kafka
allow.everyone.if.no.acl.found=false
log.dirs=/var/lib/kafka/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPERTIES

# What the health check logs in with.
cat > "$work/client.properties" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$DRIFTLINE_KAFKA_ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/ca.pem
PROPERTIES

/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" \
  --config "$work/server.properties" \
  --add-scram "SCRAM-SHA-512=[name=admin,password=$DRIFTLINE_KAFKA_ADMIN_PASSWORD]"
exec /opt/kafka/bin/kafka-server-start.sh "$work/server.properties"
