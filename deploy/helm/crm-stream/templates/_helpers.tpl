{{/* Names and labels. */}}
{{- define "crm-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "crm-stream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "crm-stream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "crm-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crm-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "crm-stream.labels" -}}
helm.sh/chart: {{ include "crm-stream.chart" . }}
{{ include "crm-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crm-stream
{{- end }}

{{/* Pods that serve /metrics carry this label; the metrics Service selects on it. */}}
{{- define "crm-stream.metricsLabel" -}}
crm-stream.io/metrics: "true"
{{- end }}

{{- define "crm-stream.connectorName" -}}
{{- printf "%s-%s" (include "crm-stream.fullname" .root | trunc 40 | trimSuffix "-") .name }}
{{- end }}

{{- define "crm-stream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "crm-stream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "crm-stream.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "crm-stream.secretName" -}}
{{- default (include "crm-stream.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
One environment variable from a key of the credentials Secret. With a chart-created Secret the
key must have a value: a pod whose secretKeyRef points at a missing key never starts, so fail
here with the value to set instead.
Call with (dict "root" $ "env" "CRM_SASL_PASSWORD" "key" "kafka-sasl-password" "why" "...").
*/}}
{{- define "crm-stream.secretEnv" -}}
{{- $root := .root }}
{{- if and (not $root.Values.secrets.existingSecret) (not (index $root.Values.secrets.values .key)) }}
{{- fail (printf "%s needs a credential: set secrets.values.%s, or secrets.existingSecret to a Secret with the key %q (%s)" .env .key .key .why) }}
{{- end }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "crm-stream.secretName" $root }}
      key: {{ .key }}
{{- end }}

{{/* Where the Kafka TLS Secret is mounted. */}}
{{- define "crm-stream.tlsDir" -}}
/etc/crm-stream/kafka-tls
{{- end }}

{{/* Environment shared by every crm-stream container: Kafka, registry, topics, logs, metrics. */}}
{{- define "crm-stream.env" -}}
{{- $k := .Values.kafka }}
- name: CRM_BOOTSTRAP_SERVERS
  value: {{ $k.bootstrapServers | quote }}
- name: CRM_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if hasPrefix "SASL" $k.securityProtocol }}
{{- if not $k.sasl.username }}
{{- fail (printf "kafka.sasl.username is required when kafka.securityProtocol is %s" $k.securityProtocol) }}
{{- end }}
- name: CRM_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: CRM_SASL_USERNAME
  value: {{ $k.sasl.username | quote }}
{{ include "crm-stream.secretEnv" (dict "root" . "env" "CRM_SASL_PASSWORD" "key" "kafka-sasl-password" "why" (printf "kafka.securityProtocol is %s" $k.securityProtocol)) }}
{{- end }}
{{- if $k.tls.existingSecret }}
- name: CRM_SSL_CA_LOCATION
  value: {{ printf "%s/%s" (include "crm-stream.tlsDir" .) $k.tls.caKey | quote }}
{{- if $k.tls.clientAuth }}
- name: CRM_SSL_CERT_LOCATION
  value: {{ printf "%s/%s" (include "crm-stream.tlsDir" .) $k.tls.certKey | quote }}
- name: CRM_SSL_KEY_LOCATION
  value: {{ printf "%s/%s" (include "crm-stream.tlsDir" .) $k.tls.keyKey | quote }}
{{- end }}
{{- else if $k.tls.clientAuth }}
{{- fail "kafka.tls.clientAuth needs kafka.tls.existingSecret: the Secret with the client certificate and key" }}
{{- end }}
{{- if $k.tls.keyPassword }}
{{- if not $k.tls.clientAuth }}
{{- fail "kafka.tls.keyPassword only applies with kafka.tls.clientAuth: true" }}
{{- end }}
{{ include "crm-stream.secretEnv" (dict "root" . "env" "CRM_SSL_KEY_PASSWORD" "key" "kafka-ssl-key-password" "why" "kafka.tls.keyPassword is true") }}
{{- end }}
- name: CRM_TOPIC_PREFIX
  value: {{ $k.topicPrefix | quote }}
- name: CRM_PARTITIONS
  value: {{ $k.partitions | quote }}
- name: CRM_REPLICATION_FACTOR
  value: {{ $k.replicationFactor | quote }}
{{- with .Values.schemaRegistry }}
{{- if .url }}
- name: CRM_SCHEMA_REGISTRY_URL
  value: {{ .url | quote }}
{{- end }}
{{- end }}
{{- if .Values.schemaRegistry.auth }}
{{- if not .Values.schemaRegistry.url }}
{{- fail "schemaRegistry.auth needs schemaRegistry.url" }}
{{- end }}
{{ include "crm-stream.secretEnv" (dict "root" . "env" "CRM_SCHEMA_REGISTRY_AUTH" "key" "schema-registry-auth" "why" "schemaRegistry.auth is true") }}
{{- end }}
- name: CRM_APP_ID
  value: {{ .Values.appId | quote }}
- name: CRM_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
- name: CRM_LOG_FORMAT
  value: {{ .Values.logs.format | quote }}
- name: CRM_LOG_LEVEL
  value: {{ .Values.logs.level | quote }}
- name: CRM_DATA_DIR
  value: /var/lib/crm-stream
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* AWS SDK settings for the S3 / Kinesis connectors. */}}
{{- define "crm-stream.awsEnv" -}}
{{- with .Values.aws.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.aws.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.aws.credentialsFromSecret }}
{{ include "crm-stream.secretEnv" (dict "root" . "env" "AWS_ACCESS_KEY_ID" "key" "aws-access-key-id" "why" "aws.credentialsFromSecret is true and an AWS connector is enabled; set it to false to use the pod identity") }}
{{ include "crm-stream.secretEnv" (dict "root" . "env" "AWS_SECRET_ACCESS_KEY" "key" "aws-secret-access-key" "why" "aws.credentialsFromSecret is true and an AWS connector is enabled; set it to false to use the pod identity") }}
{{- end }}
{{- end }}

{{/* Volumes every crm-stream pod mounts: a writable /tmp (the root filesystem is read-only)
and the Kafka TLS material. */}}
{{- define "crm-stream.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ include "crm-stream.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "crm-stream.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Pod annotations: the user's, plus a checksum of the chart-created Secret so that pods
restart when it changes (env from a secretKeyRef is read once, at container start). */}}
{{- define "crm-stream.podAnnotations" -}}
{{- $ann := merge (dict) (.extra | default dict) }}
{{- if not .root.Values.secrets.existingSecret }}
{{- $_ := set $ann "checksum/secret" (toJson .root.Values.secrets.values | sha256sum) }}
{{- end }}
{{- if $ann }}
{{- toYaml $ann }}
{{- end }}
{{- end }}

{{/* Checks that span several values, which values.schema.json cannot express. */}}
{{- define "crm-stream.validate" -}}
{{- $api := .Values.worker.api }}
{{- if and $api.ingress $api.ingress.enabled (not (and $api.port $api.service.enabled)) }}
{{- fail "worker.api.ingress.enabled needs worker.api.port (not 0) and worker.api.service.enabled: the Ingress routes to the <release>-api Service" }}
{{- end }}
{{- if gt (int .Values.worker.replicas) (int .Values.kafka.partitions) }}
{{- fail (printf "worker.replicas (%d) must not exceed kafka.partitions (%d): Faust gives each worker whole partitions of the raw topics, so workers beyond the partition count sit idle holding a PVC. Raise kafka.partitions (and the topics' partitions) or lower worker.replicas." (int .Values.worker.replicas) (int .Values.kafka.partitions)) }}
{{- end }}
{{- range $name, $c := .Values.connectors }}
{{- if and $c.enabled $c.ingress $c.ingress.enabled (not (and $c.service $c.service.enabled)) }}
{{- fail (printf "connectors.%s.ingress.enabled needs connectors.%s.service.enabled" $name $name) }}
{{- end }}
{{- if and $c.enabled $c.autoscaling $c.autoscaling.enabled }}
{{- if not (and $c.service $c.service.enabled) }}
{{- fail (printf "connectors.%s.autoscaling.enabled: only an HTTP receiver with a service scales out; a pulling connector keeps one checkpoint and runs 1 replica" $name) }}
{{- end }}
{{- if gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas) }}
{{- fail (printf "connectors.%s.autoscaling.minReplicas (%d) exceeds maxReplicas (%d)" $name (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if and $c.enabled (gt (int $c.replicas) 1) (not (and $c.service $c.service.enabled)) }}
{{- fail (printf "connectors.%s.replicas is %d: a connector that pulls from its source keeps one checkpoint and must run 1 replica (only HTTP receivers, with a service, scale out)" $name (int $c.replicas)) }}
{{- end }}
{{- end }}
{{- end }}
