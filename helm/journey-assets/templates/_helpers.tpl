{{/* Names ------------------------------------------------------------------------------- */}}
{{- define "journey.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "journey.fullname" -}}
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

{{- define "journey.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "journey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: journey-assets
{{- end }}

{{- define "journey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "journey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "journey.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "journey.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels of the pods this release starts (run, step and Spark executor pods): selectors
of the NetworkPolicies and of Kafka's listener peers. */}}
{{- define "journey.runPodLabels" -}}
app.kubernetes.io/part-of: journey-assets
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "journey.executorServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-spark-executor" (include "journey.fullname" .)) .Values.serviceAccount.executorName }}
{{- else }}
{{- default "default" .Values.serviceAccount.executorName }}
{{- end }}
{{- end }}

{{- define "journey.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "journey.envConfigMap" -}}{{ include "journey.fullname" . }}-env{{- end }}
{{- define "journey.sparkConfigMap" -}}{{ include "journey.fullname" . }}-spark{{- end }}
{{- define "journey.dataClaim" -}}
{{- default (printf "%s-data" (include "journey.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}
{{- define "journey.sparkConfDir" -}}/opt/spark-conf{{- end }}

{{- define "journey.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled }}
{{- printf "%s-kafka-bootstrap:9092" .Values.kafka.clusterName }}
{{- else }}
{{- required "kafka.externalBootstrap is required when kafka.enabled=false" .Values.kafka.externalBootstrap }}
{{- end }}
{{- end }}

{{- define "journey.sparkMaster" -}}
{{- if .Values.spark.kubernetes.enabled }}
{{- printf "k8s://%s" .Values.spark.kubernetes.apiServer }}
{{- else }}
{{- .Values.spark.master }}
{{- end }}
{{- end }}

{{/*
Environment every journey container gets besides the env ConfigMap: the MongoDB URI from the
Secret (never a literal) and the pod IP, which a Spark driver advertises to its executors.
Shared by the code-server Deployment and the container context of launched run/step pods.
*/}}
{{- define "journey.env" -}}
- name: JOURNEY_MONGO_URI
  valueFrom:
    secretKeyRef:
      name: {{ required "mongodb.existingSecret is required" .Values.mongodb.existingSecret }}
      key: {{ .Values.mongodb.uriKey }}
{{- if hasPrefix "SASL_" .Values.kafka.security.protocol }}
- name: JOURNEY_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.security.existingSecret is required for SASL" .Values.kafka.security.existingSecret }}
      key: {{ .Values.kafka.security.passwordKey }}
{{- end }}
- name: SPARK_LOCAL_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}

{{/* Secrets with CA certificates, mounted read-only under /etc/journey/<name>: the same
paths in journey containers (volumes below) and Spark executors (spark-defaults.conf). */}}
{{- define "journey.caSecrets" -}}
{{- if .Values.kafka.security.caSecret }}
kafka-ca: {{ .Values.kafka.security.caSecret }}
{{- end }}
{{- if .Values.mongodb.caSecret }}
mongodb-ca: {{ .Values.mongodb.caSecret }}
{{- end }}
{{- end }}

{{- define "journey.volumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "journey.dataClaim" . }}
- name: spark-conf
  configMap:
    name: {{ include "journey.sparkConfigMap" . }}
{{- range $name, $secret := (include "journey.caSecrets" . | fromYaml) }}
- name: {{ $name }}
  secret:
    secretName: {{ $secret }}
{{- end }}
{{- end }}

{{- define "journey.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.journey.dataDir }}
- name: spark-conf
  mountPath: {{ include "journey.sparkConfDir" . }}
  readOnly: true
{{- range $name, $secret := (include "journey.caSecrets" . | fromYaml) }}
- name: {{ $name }}
  mountPath: /etc/journey/{{ $name }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
The code location's container context (DAGSTER_CONTAINER_CONTEXT of `dagster api grpc`): the
K8sRunLauncher and the k8s_job_executor apply it to every run and step pod they create, so
those pods get the same image settings, env, Secret refs, data volume and service account as
the code server, in this release's namespace.
*/}}
{{- define "journey.containerContext" -}}
{{- $runK8sConfig := dict
      "container_config" (dict "env" (include "journey.env" . | fromYamlArray))
      "pod_spec_config" (dict "security_context" .Values.podSecurityContext)
-}}
{{- $k8s := dict
      "namespace" .Release.Namespace
      "service_account_name" (include "journey.serviceAccountName" .)
      "image_pull_policy" .Values.image.pullPolicy
      "image_pull_secrets" .Values.imagePullSecrets
      "env_config_maps" (list (include "journey.envConfigMap" .))
      "volumes" (include "journey.volumes" . | fromYamlArray)
      "volume_mounts" (include "journey.volumeMounts" . | fromYamlArray)
      "resources" .Values.runWorker.resources
      "security_context" .Values.securityContext
      "labels" (dict "app.kubernetes.io/part-of" "journey-assets" "app.kubernetes.io/instance" .Release.Name)
      "run_k8s_config" $runK8sConfig
-}}
{{- toJson (dict "k8s" $k8s) }}
{{- end }}

{{/* Strimzi renders a NetworkPolicy per listener from these peers: this release's run, step
and executor pods and its code server. */}}
{{- define "journey.kafkaPeers" -}}
{{- if .Values.networkPolicy.enabled }}
networkPolicyPeers:
  - podSelector:
      matchLabels:
        {{- include "journey.runPodLabels" . | nindent 8 }}
  - podSelector:
      matchLabels:
        {{- include "journey.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/component: user-code
{{- end }}
{{- end }}
