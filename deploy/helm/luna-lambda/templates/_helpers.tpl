{{/* The chart's name, at most 63 characters. */}}
{{- define "luna-lambda.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release name, with the chart name unless it contains it. */}}
{{- define "luna-lambda.fullname" -}}
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

{{- define "luna-lambda.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "luna-lambda.selectorLabels" -}}
app.kubernetes.io/name: {{ include "luna-lambda.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "luna-lambda.labels" -}}
helm.sh/chart: {{ include "luna-lambda.chart" . }}
{{ include "luna-lambda.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "luna-lambda.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "luna-lambda.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the database URL: yours, or the chart's. */}}
{{- define "luna-lambda.postgresSecretName" -}}
{{- default (include "luna-lambda.fullname" .) .Values.store.existingSecret }}
{{- end }}

{{/* The Secret holding the encryption key: yours, or the chart's. */}}
{{- define "luna-lambda.encryptionSecretName" -}}
{{- default (include "luna-lambda.fullname" .) .Values.encryptionKey.existingSecret }}
{{- end }}

{{/* Whether each pod gets a docker:dind sidecar. */}}
{{- define "luna-lambda.dind" -}}
{{- if and (eq .Values.containerBackend "kubernetes") .Values.containers.dind.enabled }}true{{ end }}
{{- end }}

{{/* containers.docker_socket: the dind sidecar's, or the node's socket mounted by hostPath. */}}
{{- define "luna-lambda.dockerSocket" -}}
{{- if .Values.containers.dind.enabled }}/run/dind/docker.sock{{ else }}{{ .Values.containers.hostDockerSocket }}{{ end }}
{{- end }}

{{/* Settings the service would refuse, or that cannot work with several replicas. */}}
{{- define "luna-lambda.validate" -}}
{{- if not (has .Values.store.backend (list "postgres" "sled")) }}
{{- fail (printf "store.backend must be postgres or sled, got %q" .Values.store.backend) }}
{{- end }}
{{- if not (has .Values.containerBackend (list "none" "kubernetes")) }}
{{- fail (printf "containerBackend must be none or kubernetes, got %q (docker: the pods would live on one replica's engine, out of the other replicas' reach)" .Values.containerBackend) }}
{{- end }}
{{- if eq .Values.store.backend "postgres" }}
{{- if and (not .Values.store.existingSecret) (not .Values.store.postgresUrl) }}
{{- fail "store.backend postgres needs store.postgresUrl or store.existingSecret" }}
{{- end }}
{{- if and (not .Values.encryptionKey.existingSecret) (not .Values.encryptionKey.value) }}
{{- fail "store.backend postgres needs encryptionKey.value or encryptionKey.existingSecret, the same key on every replica (head -c 32 /dev/urandom | base64)" }}
{{- end }}
{{- else if gt (int .Values.replicaCount) 1 }}
{{- fail "store.backend sled holds an exclusive lock on its data directory: replicaCount must be 1 (store.backend postgres for several replicas)" }}
{{- end }}
{{- if and (eq .Values.containerBackend "kubernetes") (not .Values.containers.registry) }}
{{- fail "containerBackend kubernetes needs containers.registry: the cluster pulls the images from it" }}
{{- end }}
{{- end }}

{{/* `key = value` lines of a TOML table from a map (JSON scalars and string lists are TOML). */}}
{{- define "luna-lambda.tomlKeys" -}}
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}

{{/* config.toml. listen, data_dir, log_format, log_level, the database URL and the encryption
key are given in the environment (Deployment). */}}
{{- define "luna-lambda.configToml" -}}
{{- $tables := default (dict) .Values.config.tables -}}
# Rendered by the luna-lambda Helm chart. listen, data_dir, log_format and log_level come from
# the environment, the database URL and the encryption key from Secrets (LUNA_LAMBDA_*).
shutdown_grace_secs = {{ int .Values.config.shutdownGraceSecs }}
container_backend = {{ toJson .Values.containerBackend }}
{{- with .Values.extraConfig }}

# extraConfig
{{ trim . }}
{{- end }}

[store]
backend = {{ toJson .Values.store.backend }}
{{- if eq .Values.store.backend "postgres" }}
postgres_pool_size = {{ int .Values.store.postgresPoolSize }}
build_lease_secs = {{ int .Values.store.buildLeaseSecs }}
reconcile_secs = {{ int .Values.store.reconcileSecs }}
{{- end }}
{{- if eq .Values.containerBackend "kubernetes" }}
{{- $containers := dict "registry" .Values.containers.registry "start_timeout_secs" (int .Values.containers.startTimeoutSecs) }}
{{- with include "luna-lambda.dockerSocket" . }}
{{- $_ := set $containers "docker_socket" . }}
{{- end }}
{{- with .Values.containers.baseImage }}
{{- $_ := set $containers "base_image" . }}
{{- end }}
{{- range $key, $value := (default (dict) (get $tables "containers")) }}
{{- $_ := set $containers $key $value }}
{{- end }}

[containers]
{{- include "luna-lambda.tomlKeys" $containers }}
{{- $kubernetes := dict "kubeconfig" "" "service_namespace" .Release.Namespace "service_pod_label" (printf "app.kubernetes.io/instance=%s" .Release.Name) "service_port" (int .Values.kubernetes.servicePort) "api_timeout_secs" (int .Values.kubernetes.apiTimeoutSecs) "pod_egress" .Values.kubernetes.podEgress }}
{{- range $key, $value := (default (dict) (get $tables "kubernetes")) }}
{{- $_ := set $kubernetes $key $value }}
{{- end }}

[kubernetes]
{{- include "luna-lambda.tomlKeys" $kubernetes }}
{{- end }}
{{- range $table, $settings := $tables }}
{{- if not (has $table (list "store" "containers" "kubernetes")) }}

[{{ $table }}]
{{- include "luna-lambda.tomlKeys" $settings }}
{{- end }}
{{- end }}
{{- end }}

{{/* A probe of the service container on its HTTP port. */}}
{{- define "luna-lambda.probe" -}}
httpGet:
  path: {{ .path | quote }}
  port: http
periodSeconds: {{ int .periodSeconds }}
timeoutSeconds: {{ int .timeoutSeconds }}
failureThreshold: {{ int .failureThreshold }}
{{- end }}
