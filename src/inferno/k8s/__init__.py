"""Kubernetes mode: Inferno's custom resources, their CRDs, the operator that reconciles
them, and the manifests `inferno k8s render` (and the Helm chart) produce.

Nothing here imports ``kopf`` or ``kubernetes`` at module level: only the operator needs
them, and it imports them when it starts.
"""
