"""``python -m synthex.cli``: the same as the ``synthex`` console script (used by ``accelerate launch``)."""
from synthex.cli import main

main()
