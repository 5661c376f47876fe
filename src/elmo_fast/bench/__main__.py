"""python -m elmo_fast.bench  (= elmo-fast bench)"""
import sys

from .elmo import main

sys.exit(main())
