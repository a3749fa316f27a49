{{/*
Chart name, shortened to the 63 characters a label value may hold.
*/}}
{{- define "mnv2-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: "<release>-<chart>", or the release name alone when it already contains the chart
name (so `helm install mnv2-operator .` gives "mnv2-operator", not "mnv2-operator-mnv2-operator").
*/}}
{{- define "mnv2-operator.fullname" -}}
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
Chart label value: "<name>-<version>".
*/}}
{{- define "mnv2-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "mnv2-operator.labels" -}}
helm.sh/chart: {{ include "mnv2-operator.chart" . }}
{{ include "mnv2-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mnv2-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator pod (immutable once the Deployment exists: keep them minimal).
*/}}
{{- define "mnv2-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mnv2-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "mnv2-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mnv2-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference "<repository>:<tag>", the tag defaulting to the chart's appVersion.
Call with (dict "image" .Values.image "root" .).
*/}}
{{- define "mnv2-operator.imageRef" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The rules the operator needs in every namespace it watches: in a ClusterRole when it watches the whole
cluster, in one Role per namespace otherwise. Exactly the verbs the operator calls (docs/operator.md,
"API requests the operator makes"); tests/integration/chart checks every request of an operator run
against these rules, tests/integration/security checks them with the API server's own authorizer.
Each rule carries its reason as a comment, which the plain manifests (manifests/rbac/) keep.

What is left out on purpose: Secrets (never read; pull secrets are only named, within the admin's
policy), pods/exec, attach, portforward and serviceaccounts/token, update anywhere, patch of
anything whose rendered form never changes (Service, ServiceAccount, Role, RoleBinding:
render.FIXED_KINDS), delete of anything but its pods and jobs, bind/escalate/impersonate, and every
cluster-scoped write. What cannot be narrowed further: create takes no resourceNames in Kubernetes
RBAC (the name is not known when it is authorized), and the children's names follow the jobs' names,
so create, get and patch hold for every name in a watched namespace; the operator itself touches
only the job's children (a controller owner reference with the job's uid), and what a job can ask
for is limited by the policy values (docs/install.md, "Security model"). To keep the operator out of
namespaces that run no training (kube-system among them), set watchNamespaces.
*/}}
{{- define "mnv2-operator.namespacedRules" -}}
# The jobs: kopf lists and watches them; the operator reads one (get) only when its watch copy may be
# older than its own last status write, and deletes it when ttlSecondsAfterFinished has passed.
- apiGroups: ["training.mnv2.dev"]
  resources: ["mobilenetv2trainingjobs"]
  verbs: ["get", "list", "watch", "delete"]
# The operator merge-patches its part of the status (phase, conditions, workers, restarts). Holding
# patch is also what lets it create each job's trainer Role, which grants patch on that one job's
# status: Kubernetes refuses a Role granting rights its creator does not hold, unless the creator has
# escalate on roles, which would let it grant anything; holding the one right is the smaller grant.
- apiGroups: ["training.mnv2.dev"]
  resources: ["mobilenetv2trainingjobs/status"]
  verbs: ["patch"]
# The training pods, one per node: listed and watched for kopf's index, created per attempt, deleted
# (with a uid precondition) on a gang restart, suspension, deadline or cleanup; get when a create
# finds a pod of that name (is it the job's?). Pods are never patched or updated.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The ConfigMap <job>-config holds the resolved training config, which follows the spec: created once,
# and when an attempt starts and one exists, read (get) and, only if its controller owner reference is
# the job's, merge-patched to the rendered form; anything else of that name is left untouched.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# The headless Service <job> and the trainer's ServiceAccount <job>-trainer: rendered from the job's
# name alone, so never patched; get when a create finds one of that name (is it the job's?).
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["get", "create"]
# The trainer's Role (patch of its own job's status) and RoleBinding <job>-trainer: as above, created
# once and never patched. Creating the binding needs no bind right: the operator holds the Role's rules.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create"]
# Kubernetes Events about the job (children and pods created, restarts, failures, conflicts).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.gangScheduling }}
# Volcano PodGroups of gang-scheduled jobs: minMember and the queue follow the spec, so like the
# ConfigMap: created, read when one exists, and patched only if it is the job's.
- apiGroups: ["scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- end }}

{{/*
Cluster-scoped rules kopf needs in every mode: it scans the CRDs at start and watches them to notice
when the MobileNetV2TrainingJob CRD is (re)installed.
*/}}
{{- define "mnv2-operator.clusterRules" -}}
# kopf scans the CRDs at start and watches them (it notices the job CRD being installed later).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
