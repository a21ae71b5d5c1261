package signing

// kept for the TUF client in cmd/handset and tests; remove when they import it
import (
	_ "github.com/theupdateframework/go-tuf/v2/metadata/config"
	_ "github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	_ "github.com/theupdateframework/go-tuf/v2/metadata/updater"
)
