"""``python -m medvit_edge.cli`` (what torchrun and accelerate launch)."""

from medvit_edge.cli.app import main

main()
