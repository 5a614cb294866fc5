{{/*
The chart name, or nameOverride.
*/}}
{{- define "remote-docker-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: fullnameOverride, or <release>-<name> (just <release> when it
already contains the name). Truncated to 63 characters, the limit of a DNS label.
*/}}
{{- define "remote-docker-operator.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "remote-docker-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "remote-docker-operator.labels" -}}
helm.sh/chart: {{ include "remote-docker-operator.chart" . }}
{{ include "remote-docker-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator's pod (immutable in the Deployment's selector).
*/}}
{{- define "remote-docker-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "remote-docker-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "remote-docker-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "remote-docker-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "remote-docker-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Name of the helm test's objects (ServiceAccount, Role, RoleBinding, Pod).
*/}}
{{- define "remote-docker-operator.testName" -}}
{{- printf "%s-test" (include "remote-docker-operator.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the metrics Service and ServiceMonitor (the dashboard ConfigMap adds "-dashboard").
*/}}
{{- define "remote-docker-operator.metricsName" -}}
{{- printf "%s-metrics" (include "remote-docker-operator.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the admission webhook's Service, serving Secret and MutatingWebhookConfiguration.
*/}}
{{- define "remote-docker-operator.webhookName" -}}
{{- printf "%s-webhook" (include "remote-docker-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The webhook's serving certificate and CA as JSON ({"ca.crt", "tls.crt", "tls.key"}, base64),
the same for every template that includes it in one render (the Secret and the
MutatingWebhookConfiguration's caBundle): made once, and kept across upgrades. An upgrade that
made a new one would leave running replicas serving the old one until the kubelet refreshed
their mounted Secret, and the API server refusing labelled pods meanwhile. (`helm template`
cannot look up, so it makes one.)
*/}}
{{- define "remote-docker-operator.webhookTLS" -}}
{{- if not (hasKey . "webhookTLS") }}
{{- $name := include "remote-docker-operator.webhookName" . }}
{{- $host := printf "%s.%s.svc" $name .Release.Namespace }}
{{- $found := lookup "v1" "Secret" .Release.Namespace $name }}
{{- if and $found $found.data (hasKey $found.data "ca.crt") }}
{{- $_ := set . "webhookTLS" (pick $found.data "ca.crt" "tls.crt" "tls.key") }}
{{- else }}
{{- $ca := genCA (printf "%s-ca" $name) 3650 }}
{{- $cert := genSignedCert $host nil (list $host (printf "%s.%s" $name .Release.Namespace) $name) 3650 $ca }}
{{- $_ := set . "webhookTLS" (dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc)) }}
{{- end }}
{{- end }}
{{- get . "webhookTLS" | toJson }}
{{- end }}

{{/*
What the seccomp profile DaemonSet's two containers share: the operator's image, little memory,
no capability. Called with (dict "top" $ "uid" N): the writer is root only to write the
kubelet's root-owned directory as its owner; the holder is nobody.
*/}}
{{- define "remote-docker-operator.seccompContainer" -}}
image: {{ include "remote-docker-operator.image" .top | quote }}
imagePullPolicy: {{ .top.Values.image.pullPolicy }}
resources:
  requests: {cpu: 1m, memory: 8Mi}
  limits: {memory: 32Mi}
securityContext:
  runAsUser: {{ .uid }}
  runAsGroup: {{ .uid }}
  runAsNonRoot: {{ ne (int .uid) 0 }}
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end }}
