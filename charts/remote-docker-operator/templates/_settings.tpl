{{/*
The operator's RDO_* environment, one variable per setting:
generated from config.py's Settings by `make generate`; do not edit.
*/}}
{{- define "remote-docker-operator.settingsEnv" }}
- name: RDO_NAMESPACE_PREFIX
  value: {{ .Values.operator.namespacePrefix | quote }}
- name: RDO_DEFAULT_DEADLINE_SECONDS
  value: {{ .Values.operator.defaultDeadlineSeconds | int64 | toString | quote }}
- name: RDO_DEFAULT_TTL_SECONDS
  value: {{ .Values.operator.defaultTtlSeconds | int64 | toString | quote }}
- name: RDO_MAX_RUNNING
  value: {{ .Values.operator.maxRunning | int64 | toString | quote }}
- name: RDO_RESYNC_SECONDS
  value: {{ .Values.operator.resyncSeconds | toString | quote }}
- name: RDO_CLUSTER_DOMAIN
  value: {{ .Values.operator.clusterDomain | quote }}
- name: RDO_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: RDO_LOG_FORMAT
  value: {{ .Values.operator.logFormat | quote }}
- name: RDO_LIVENESS_ENDPOINT
  value: "http://0.0.0.0:8080/healthz"
- name: RDO_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | int64 | toString | quote }}
- name: RDO_WEBHOOK_PORT
  value: {{ ternary .Values.webhook.port 0 .Values.webhook.enabled | int64 | toString | quote }}
- name: RDO_WEBHOOK_CERT_DIR
  value: "/etc/remote-docker-operator/webhook"
- name: RDO_WAIT_IMAGE
  value: {{ include "remote-docker-operator.image" . | quote }}
- name: RDO_WAIT_IMAGE_PULL_POLICY
  value: {{ .Values.image.pullPolicy | quote }}
- name: RDO_LEADER_ELECTION
  value: {{ .Values.operator.leaderElection | toString | quote }}
- name: RDO_LEASE_NAME
  value: {{ include "remote-docker-operator.fullname" . | quote }}
- name: RDO_LEASE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RDO_LEADER_IDENTITY
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: RDO_LEASE_DURATION_SECONDS
  value: {{ .Values.operator.leaseDurationSeconds | int64 | toString | quote }}
- name: RDO_LEASE_RENEW_DEADLINE_SECONDS
  value: {{ .Values.operator.leaseRenewDeadlineSeconds | toString | quote }}
- name: RDO_LEASE_RETRY_PERIOD_SECONDS
  value: {{ .Values.operator.leaseRetryPeriodSeconds | toString | quote }}
{{- end }}
