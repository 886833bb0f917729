"""Many processes: the facts about ranks and collectives, and the rank-local mode of calls outside
a fit's own passes (``ranks``; ``pluglearn.dist``), what every rank agrees on at a fit's start
and how cancels are agreed (``agreement``), and the ``DDP`` and ``FSDP`` plugins."""
