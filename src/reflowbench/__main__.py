from reflowbench.cli import main

raise SystemExit(main())
