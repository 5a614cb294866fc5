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
