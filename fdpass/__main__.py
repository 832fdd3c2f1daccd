from fdpass.cli import main

raise SystemExit(main())
