"""The software layer: EasyBuild stacks per CPU target, built through a writable overlay at /cvmfs, packed."""
