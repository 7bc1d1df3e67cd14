from flowkit.cli import main

raise SystemExit(main())
