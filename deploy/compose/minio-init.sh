#!/bin/sh
# One-shot init step of docker-compose.yml (in the MinIO image, which carries `mc`): the bucket,
# and one MinIO user per service with a policy on that bucket only. serving and the registry only
# read (models, artifacts); feature, trainer and monitor also write (segments, models, checkpoints).
# The root account stays with this step and MinIO itself; no service holds it. Idempotent.
set -eu
export SSL_CERT_FILE=/run/secrets/ca.pem  # mc (Go) verifies MinIO's certificate with the deployment's CA
bucket="${DRIFTLINE_BUCKET:?}"
mc alias set driftline https://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "driftline/$bucket"

cat > /tmp/driftline-read.json <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"], "Resource": ["arn:aws:s3:::$bucket"]},
  {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::$bucket/*"]}]}
POLICY
cat > /tmp/driftline-write.json <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
   "Resource": ["arn:aws:s3:::$bucket"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
   "s3:ListMultipartUploadParts"], "Resource": ["arn:aws:s3:::$bucket/*"]}]}
POLICY
mc admin policy create driftline driftline-read /tmp/driftline-read.json >/dev/null
mc admin policy create driftline driftline-write /tmp/driftline-write.json >/dev/null

grant() {  # service policy access-key secret-key
  mc admin user add driftline "$3" "$4" >/dev/null
  if ! mc admin user info driftline "$3" | grep -q "driftline-$2"; then
    mc admin policy attach driftline "driftline-$2" --user "$3" >/dev/null
  fi
  echo "minio-init: $1 may $2 $bucket"
}
grant feature write "$S3_FEATURE_ACCESS_KEY" "$S3_FEATURE_SECRET_KEY"
grant trainer write "$S3_TRAINER_ACCESS_KEY" "$S3_TRAINER_SECRET_KEY"
grant monitor write "$S3_MONITOR_ACCESS_KEY" "$S3_MONITOR_SECRET_KEY"
grant registry read "$S3_REGISTRY_ACCESS_KEY" "$S3_REGISTRY_SECRET_KEY"
grant serving read "$S3_SERVING_ACCESS_KEY" "$S3_SERVING_SECRET_KEY"
