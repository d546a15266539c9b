"""`python -m redheart ...`, which is also how torchrun starts it:
`torchrun --nproc_per_node N -m redheart train --run R`."""

from redheart.cli import main

main()
