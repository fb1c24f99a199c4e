{{/*
Names, labels and the pieces every workload shares. Ports are Cairn's: HTTP 8080 (the
collector), gRPC 50051 (every service's API and health), admin 9090 (/healthz, /readyz,
/metrics).
*/}}

{{- define "cairn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cairn.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: a service, or "all" on the embedded store. */}}
{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cairn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cairn.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cairn.secretName" -}}
{{- default (printf "%s-secrets" (include "cairn.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "cairn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The NATS chart's name for its objects (its fullname rule). */}}
{{- define "cairn.natsName" -}}
{{- if contains "nats" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cairn.natsUrl" -}}
{{- if .Values.bus.url -}}
{{- .Values.bus.url -}}
{{- else if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "cairn.natsName" .) .Release.Namespace -}}
{{- else -}}
{{- fail "NATS: set bus.url to an external NATS, or nats.enabled=true" -}}
{{- end -}}
{{- end -}}

{{/* The NATS monitoring endpoint KEDA reads consumer lag from. */}}
{{- define "cairn.natsMonitoring" -}}
{{- if .Values.bus.monitoringEndpoint -}}
{{- .Values.bus.monitoringEndpoint -}}
{{- else if .Values.bus.url -}}
{{- $first := first (splitList "," .Values.bus.url) -}}
{{- $host := (urlParse $first).host | splitList ":" | first -}}
{{- printf "%s:8222" $host -}}
{{- else -}}
{{- printf "%s-headless.%s.svc:8222" (include "cairn.natsName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "cairn.scyllaUri" -}}
{{- if .Values.store.scylla.uri -}}
{{- .Values.store.scylla.uri -}}
{{- else if .Values.store.scylla.cluster.enabled -}}
{{- printf "scylla://%s-scylla-client.%s.svc:9042/cairn" (include "cairn.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* A service's settings: `defaults` with its entry under `services` over them. */}}
{{- define "cairn.serviceValues" -}}
{{- $own := index .root.Values.services .name | default dict -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $own)) -}}
{{- end -}}

{{/* The enabled services, in the order `cairn up` starts them. */}}
{{- define "cairn.enabledServices" -}}
{{- $enabled := list -}}
{{- range $name := list "collector" "identity" "profile-store" "enrich-geo" "enrich-device" "enrich-activity" "enrich-content" "segmenter" "dispatcher" "console" -}}
{{- if (index $.Values.services $name).enabled -}}
{{- $enabled = append $enabled $name -}}
{{- end -}}
{{- end -}}
{{- toJson $enabled -}}
{{- end -}}

{{/* The secret variables each service reads. */}}
{{- define "cairn.secretVars" -}}
{{- $vars := list "CAIRN_ADMIN_TOKENS" -}}
{{- if eq .name "collector" -}}
{{- $vars = concat $vars (list "CAIRN_WRITE_KEYS" "CAIRN_EMAIL_LINK_SECRET") -}}
{{- end -}}
{{- if has .name (list "identity" "profile-store" "enrich-activity" "enrich-content" "segmenter" "dispatcher" "all") -}}
{{- $vars = append $vars "CAIRN_SCYLLA_URI" -}}
{{- end -}}
{{- if eq .name "segmenter" -}}
{{- $vars = append $vars "CAIRN_CAMPAIGN_WEBHOOK_SECRET" -}}
{{- end -}}
{{- if eq .name "dispatcher" -}}
{{- $vars = concat $vars (list "CAIRN_EMAIL_LINK_SECRET" "CAIRN_SMTP_URL" "CAIRN_EMAIL_B2B_SMTP_URL" "CAIRN_EMAIL_B2C_SMTP_URL") -}}
{{- end -}}
{{- if eq .name "all" -}}
{{- $vars = concat $vars (list "CAIRN_WRITE_KEYS" "CAIRN_EMAIL_LINK_SECRET" "CAIRN_CAMPAIGN_WEBHOOK_SECRET" "CAIRN_SMTP_URL" "CAIRN_EMAIL_B2B_SMTP_URL" "CAIRN_EMAIL_B2C_SMTP_URL") -}}
{{- end -}}
{{- toJson $vars -}}
{{- end -}}

{{/*
The durable consumers whose lag says a service needs more replicas: [stream, consumer]
pairs, as the services declare them (cli/tests/chart.rs checks them against a running
service).
*/}}
{{- define "cairn.consumers" -}}
{{- $consumers := list -}}
{{- if eq .name "identity" -}}
{{- $consumers = list (list "EVENTS" "identity") -}}
{{- else if eq .name "profile-store" -}}
{{- range $partition := until (int .root.Values.bus.partitions) -}}
{{- $consumers = append $consumers (list "IDENTIFIED" (printf "profile_store_events_%d" $partition)) -}}
{{- end -}}
{{- else if hasPrefix "enrich-" .name -}}
{{- $consumers = list (list "IDENTIFIED" (replace "-" "_" .name)) -}}
{{- else if eq .name "segmenter" -}}
{{- $consumers = list (list "PROFILES" "segmenter") (list "CAMPAIGNS" "segmenter_campaign_timers") -}}
{{- else if eq .name "dispatcher" -}}
{{- $consumers = list (list "CAMPAIGNS" "dispatcher") -}}
{{- end -}}
{{- toJson $consumers -}}
{{- end -}}

{{/*
The pod template of a component. Arguments: root, component (a service name or "all"),
services (what it runs), values (its merged settings).
*/}}
{{- define "cairn.podTemplate" -}}
{{- $root := .root -}}
{{- $values := .values -}}
{{- $http := or (has "collector" .services) (has "console" .services) -}}
metadata:
  labels:
    {{- include "cairn.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- with $values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "cairn.serviceAccountName" $root }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  {{- if $values.topologySpread }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "cairn.selectorLabels" (dict "root" $root "component" .component) | nindent 10 }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "cairn.selectorLabels" (dict "root" $root "component" .component) | nindent 10 }}
  {{- end }}
  {{- with $values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: cairn
      image: {{ include "cairn.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: {{ toJson (prepend .services "serve") }}
      ports:
        {{- if $http }}
        - name: http
          containerPort: 8080
        {{- end }}
        - name: grpc
          containerPort: 50051
        - name: admin
          containerPort: 9090
      envFrom:
        - configMapRef:
            name: {{ include "cairn.fullname" $root }}-config
      env:
        {{- range $var := include "cairn.secretVars" (dict "name" .component) | fromJsonArray }}
        - name: {{ $var }}
          valueFrom:
            secretKeyRef:
              name: {{ include "cairn.secretName" $root }}
              key: {{ $var }}
              optional: true
        {{- end }}
        {{- if $root.Values.bus.credsSecret }}
        - name: CAIRN_NATS_CREDS_FILE
          value: /etc/cairn/nats/nats.creds
        {{- end }}
        {{- if $root.Values.store.scylla.tlsCaSecret }}
        - name: CAIRN_SCYLLA_TLS_CA
          value: /etc/cairn/scylla/ca.crt
        {{- end }}
        {{- if $root.Values.tls.secretName }}
        - name: CAIRN_TLS_CERT
          value: /etc/cairn/tls/tls.crt
        - name: CAIRN_TLS_KEY
          value: /etc/cairn/tls/tls.key
        {{- end }}
        {{- if eq .component "console" }}
        {{- /* The console calls each service at its own Service. */}}
        {{- range $var, $service := dict "CAIRN_CONSOLE_SEGMENTER_ADDR" "segmenter" "CAIRN_CONSOLE_PROFILE_STORE_ADDR" "profile-store" "CAIRN_CONSOLE_DISPATCHER_ADDR" "dispatcher" }}
        - name: {{ $var }}
          value: {{ include "cairn.fullname" $root }}-{{ $service }}:50051
        {{- end }}
        {{- if $root.Values.tls.secretName }}
        - name: CAIRN_TLS_CA
          value: /etc/cairn/tls/ca.crt
        {{- end }}
        {{- end }}
        {{- range $name, $value := $values.env }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
      {{- if or $http $root.Values.tls.secretName }}
      {{- /* Kubernetes' gRPC probe cannot speak TLS: the admin port stays plain. */}}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: 10
        failureThreshold: 3
      {{- else }}
      readinessProbe:
        grpc:
          port: 50051
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        grpc:
          port: 50051
        periodSeconds: 10
        failureThreshold: 3
      {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: 2
        failureThreshold: 60
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        privileged: false
        capabilities:
          drop: [ALL]
      volumeMounts:
        - name: data
          mountPath: /var/lib/cairn
        - name: tmp
          mountPath: /tmp
        {{- if $root.Values.bus.credsSecret }}
        - name: nats-creds
          mountPath: /etc/cairn/nats
          readOnly: true
        {{- end }}
        {{- if $root.Values.store.scylla.tlsCaSecret }}
        - name: scylla-ca
          mountPath: /etc/cairn/scylla
          readOnly: true
        {{- end }}
        {{- if $root.Values.tls.secretName }}
        - name: tls
          mountPath: /etc/cairn/tls
          readOnly: true
        {{- end }}
        {{- with $values.volumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- if ne .component "all" }}
    - name: data
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir: {}
    {{- if $root.Values.bus.credsSecret }}
    - name: nats-creds
      secret:
        secretName: {{ $root.Values.bus.credsSecret }}
    {{- end }}
    {{- if $root.Values.store.scylla.tlsCaSecret }}
    - name: scylla-ca
      secret:
        secretName: {{ $root.Values.store.scylla.tlsCaSecret }}
    {{- end }}
    {{- if $root.Values.tls.secretName }}
    - name: tls
      secret:
        secretName: {{ $root.Values.tls.secretName }}
    {{- end }}
    {{- with $values.volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
How fast replicas come and go: up at once on a burst (double, or four more, every 15 s),
down slowly (at most half every minute, after five calm minutes).
*/}}
{{- define "cairn.scalingBehavior" -}}
scaleUp:
  stabilizationWindowSeconds: 0
  selectPolicy: Max
  policies:
    - type: Percent
      value: 100
      periodSeconds: 15
    - type: Pods
      value: 4
      periodSeconds: 15
scaleDown:
  stabilizationWindowSeconds: 300
  selectPolicy: Max
  policies:
    - type: Percent
      value: 50
      periodSeconds: 60
{{- end -}}

{{/* A service's replica bounds: at least 1 (no scale-to-zero); profile-store at most one per partition. */}}
{{- define "cairn.replicaBounds" -}}
{{- $min := max 1 (int .values.autoscaling.minReplicas) -}}
{{- $max := max $min (int .values.autoscaling.maxReplicas) -}}
{{- if eq .name "profile-store" -}}
{{- $max = min $max (int .root.Values.bus.partitions) -}}
{{- $min = min $min $max -}}
{{- end -}}
{{- toJson (dict "min" $min "max" $max) -}}
{{- end -}}
