"""``profile_list`` examples copied from KubeSpawner's and z2jh's documentation,
unchanged, for the tests (``test_tiers.py``, ``test_pasted_profiles_hub.py``).

Python examples are pasted as they are; YAML examples are pasted as text and
converted mechanically with ``yaml.safe_load`` (z2jh's Helm values put the
list under ``singleuser.profileList``, which KubeSpawner receives as
``profile_list``).
"""

import textwrap

import yaml

# jupyterhub/kubespawner, kubespawner/spawner.py, help of ``profile_list``,
# "List example" (commit 4161d544121f30a09a5bb7b798a5213c22d5bc90).
KUBESPAWNER_LIST_EXAMPLE = [
    {
        'display_name': 'Demo - profile_list entry 1',
        'description': 'Demo description for profile_list entry 1, and it should look good even though it is a bit lengthy.',
        'slug': 'demo-1',
        'default': True,
        'profile_options': {
            'image': {
                'display_name': 'Image',
                'choices': {
                    'base': {
                        'display_name': 'jupyter/base-notebook:latest',
                        'kubespawner_override': {'image': 'jupyter/base-notebook:latest'},
                    },
                    'minimal': {
                        'display_name': 'jupyter/minimal-notebook:latest',
                        'default': True,
                        'kubespawner_override': {'image': 'jupyter/minimal-notebook:latest'},
                    },
                },
                'unlisted_choice': {
                    'enabled': True,
                    'display_name': 'Other image',
                    'display_name_in_choices': 'Enter image manually',
                    'validation_regex': '^jupyter/.+:.+$',
                    'validation_message': 'Must be an image matching ^jupyter/<name>:<tag>$',
                    'kubespawner_override': {'image': '{value}'},
                },
            },
        },
        'kubespawner_override': {
            'default_url': '/lab',
        },
    },
    {
        'display_name': 'Demo - profile_list entry 2',
        'slug': 'demo-2',
        'kubespawner_override': {
            'extra_resource_guarantees': {"nvidia.com/gpu": "1"},
        },
    },
]

# Same file, "Dict example". One change, or it is no Python: the docs write
# the second key as ``demo-2:`` (unquoted); here it is ``"demo-2":``.
KUBESPAWNER_DICT_EXAMPLE = {
    "demo-1": {
        'display_name': 'Demo - profile_list entry 1',
        'description': 'Demo description for profile_list entry 1, and it should look good even though it is a bit lengthy.',
        'slug': 'demo-1',
        'default': True,
        'profile_options': {
            'image': {
                'display_name': 'Image',
                'choices': {
                    'base': {
                        'display_name': 'jupyter/base-notebook:latest',
                        'kubespawner_override': {'image': 'jupyter/base-notebook:latest'},
                    },
                },
                'unlisted_choice': {
                    'enabled': True,
                    'display_name': 'Other image',
                    'display_name_in_choices': 'Enter image manually',
                    'validation_regex': '^jupyter/.+:.+$',
                    'validation_message': 'Must be an image matching ^jupyter/<name>:<tag>$',
                    'kubespawner_override': {'image': '{value}'},
                },
            },
        },
        'kubespawner_override': {
            'default_url': '/lab',
        },
    },
    "demo-2": {
        'display_name': 'Demo - profile_list entry 2',
        'slug': 'demo-2',
        'kubespawner_override': {
            'extra_resource_guarantees': {"nvidia.com/gpu": "1"},
        },
    },
}


def _helm_profile_list(values_yaml):
    return yaml.safe_load(textwrap.dedent(values_yaml))["singleuser"]["profileList"]


# jupyterhub/zero-to-jupyterhub-k8s, docs/source/jupyterhub/customizing/
# user-environment.md, "Using multiple profiles to let users select their
# environment", first example (commit 48ea50e34daddde55d76e30df6ecd47e4abd4d8e).
Z2JH_ONE_PROFILE = _helm_profile_list(
    """
    singleuser:
      profileList:
        - display_name: "Name to be displayed to users"
          description: "Longer description for users."
          # Configuration unique to this profile
          kubespawner_override:
            your_config: "Your value"
          # Defines the default profile - only use for one profile
          default: true
    """
)

# Same section, "an example with four profiles".
Z2JH_FOUR_PROFILES = _helm_profile_list(
    """
    singleuser:
      # Defines the default image
      image:
        name: jupyter/minimal-notebook
        tag: 2343e33dec46
      profileList:
        - display_name: "Minimal environment"
          description: "To avoid too much bells and whistles: Python."
          default: true
        - display_name: "Datascience environment"
          description: "If you want the additional bells and whistles: Python, R, and Julia."
          kubespawner_override:
            image: jupyter/datascience-notebook:2343e33dec46
        - display_name: "Spark environment"
          description: "The Jupyter Stacks spark image!"
          kubespawner_override:
            image: jupyter/all-spark-notebook:2343e33dec46
        - display_name: "Learning Data Science"
          description: "Datascience Environment with Sample Notebooks"
          kubespawner_override:
            image: jupyter/datascience-notebook:2343e33dec46
            lifecycle_hooks:
              postStart:
                exec:
                  command:
                    - "sh"
                    - "-c"
                    - >
                      gitpuller https://github.com/data-8/materials-fa17 master materials-fa;
    """
)

# Same repository, docs/source/jupyterhub/customizing/user-resources.md,
# "Set user GPU guarantees / limits".
Z2JH_GPU_SERVER = _helm_profile_list(
    """
    singleuser:
      profileList:
        - display_name: "GPU Server"
          description: "Spawns a notebook server with access to a GPU"
          kubespawner_override:
            extra_resource_limits:
              nvidia.com/gpu: "1"
    """
)

# z2jh's own release post for chart 0.8 (the release that brought profiles),
# https://blog.jupyter.org/zero-to-jupyterhub-helm-chart-0-8-b99e0a79fd2a:
# "The above sample is created from the following snippet in your
# values.yaml". Pasted as is, including its typo ``mem_guaranttee`` (a
# setting that exists nowhere: ignored with a warning); only the page's
# indentation had to be restored.
Z2JH_08_RESOURCE_PROFILES = _helm_profile_list(
    """
    singleuser:
      profileList:
        - display_name: "Small: default"
          description: |
            A small job. 1 CPU, no GPU. This is the default.
          default: True
          kubespawner_override:
            cpu_limit: 1
            cpu_guarantee: 1
            mem_limit: "1G"
            mem_guarantee: "512M"
            extra_resource_limits: {}
        - display_name: "Big: 8 CPUs"
          description: |
            A big job. 8 CPUs, no GPU, and 64GB of RAM
          kubespawner_override:
            cpu_limit: 8
            cpu_guarantee: 8
            mem_limit: "64G"
            mem_guaranttee: "64G"
            extra_resource_limits: {}
        - display_name: "GPU job"
          description: |
            This configuration gives you 4 CPUs, 16GB of RAM, and a GPU
          kubespawner_override:
            image: consideratio/singleuser-gpu:v0.3.0
            cpu_limit: 4
            cpu_guarantee: 4
            mem_limit: "16G"
            mem_guarantee: "16G"
            extra_resource_limits:
              nvidia.com/gpu: "1"
    """
)

ALL_EXAMPLES = {
    "kubespawner-list": KUBESPAWNER_LIST_EXAMPLE,
    "kubespawner-dict": KUBESPAWNER_DICT_EXAMPLE,
    "z2jh-one-profile": Z2JH_ONE_PROFILE,
    "z2jh-four-profiles": Z2JH_FOUR_PROFILES,
    "z2jh-gpu-server": Z2JH_GPU_SERVER,
    "z2jh-0.8-resources": Z2JH_08_RESOURCE_PROFILES,
}
