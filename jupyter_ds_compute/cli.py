"""``jupyter-ds-compute``: a tiny dispatcher; ``jupyter-ds-compute aws ...`` deploys the hub."""

from __future__ import annotations

import sys

USAGE = """usage: jupyter-ds-compute {aws} ...

  aws    deploy the hub on AWS (CloudFormation): deploy, upgrade, rollback,
         status, destroy, policy, template (jupyter-ds-compute aws --help)
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "aws":
        from .aws.cli import main as aws_main

        return aws_main(argv[1:])
    print(f"jupyter-ds-compute: unknown command {argv[0]!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
