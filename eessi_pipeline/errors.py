"""The one error hierarchy of eessi-pipeline.

Every message says what failed, the offending value, and the next step.  The CLI
maps ``PipelineError`` to exit code 1 (``UsageError`` to 2) and prints the
message as one line.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a refusal or failure that the user can act on."""

    exit_code = 1


class UsageError(PipelineError):
    """The command line itself is wrong (unknown option value, missing argument)."""

    exit_code = 2


class MatrixError(PipelineError):
    """The architecture matrix (matrices/targets.yaml) is invalid or lacks an entry."""


class DetectionError(PipelineError):
    """The host CPU could not be described from /proc/cpuinfo or lscpu text."""


class SelectionError(PipelineError):
    """No target can be selected, or an override names no known target."""


class BuildNodeError(PipelineError):
    """This host may not build the requested target natively."""


class RepositoryError(PipelineError):
    """A CVMFS repository is missing, locked, malformed, or fails verification."""


class TarballRejected(PipelineError):
    """A tarball failed validation before anything was written; the repository is unchanged."""


class ServiceError(PipelineError):
    """A local service (nginx Stratum 0/1, squid proxy) could not be configured, started or stopped."""


class CompatError(PipelineError):
    """A compatibility layer could not be planned, built, packed or checked."""


class GateRefused(PipelineError):
    """The gate refuses a tarball: a test, signature, hash or policy check failed."""


class PublishError(PipelineError):
    """Publishing failed after the gate accepted; the repository stays at its previous revision."""


class BuildError(PipelineError):
    """A software-layer build could not be planned, provisioned, run, checked or packed."""


class TrustError(PipelineError):
    """A trust file or directory (signers, keys, staging) can be changed by other local users."""


class ClusterError(PipelineError):
    """The embedded Slurm cluster could not be planned, started, checked or stopped, or a job failed."""
