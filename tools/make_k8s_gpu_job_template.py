"""Write deploy/k8s-gpu-job-template.json: prefect-kubernetes' default base job template plus a
`gpu_limit` variable that becomes the container's `nvidia.com/gpu` request and limit.

The default template has cpu/memory variables only, so a GPU asked for in a deployment's job
variables would be dropped silently. Create the pool with this template:
    prefect work-pool create uqa-gpu-k8s --type kubernetes --base-job-template deploy/k8s-gpu-job-template.json
Regenerate after upgrading prefect-kubernetes: python tools/make_k8s_gpu_job_template.py
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect_kubernetes.worker import KubernetesWorker

OUT = Path(__file__).resolve().parent.parent / "deploy" / "k8s-gpu-job-template.json"


def main() -> None:
    template = KubernetesWorker.get_default_base_job_template()
    template["variables"]["properties"]["gpu_limit"] = {
        "title": "GPU Limit",
        "description": "NVIDIA GPUs for the job's container (nvidia.com/gpu request and limit)",
        "type": "integer",
        "minimum": 0,
        "default": 1,
    }
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_limit }}"
    container["resources"]["requests"]["nvidia.com/gpu"] = "{{ gpu_limit }}"
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(template, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
