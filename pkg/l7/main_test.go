package l7

import (
	"testing"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }
