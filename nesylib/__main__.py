from nesylib.cli import main

raise SystemExit(main())
