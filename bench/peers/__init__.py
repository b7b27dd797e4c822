"""``convoy bench peers``: convoy against other serving stacks on the same model, payloads
and machine. Each contender is a server process of its own (``bench.peers.*_server``),
started and stopped by ``bench.peers.contenders``; the scenario is in
``bench.peers.scenario``."""
