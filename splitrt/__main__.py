from splitrt.cli import main

raise SystemExit(main())
