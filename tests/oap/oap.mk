# A real Apache SkyWalking OAP for the analysis tests (tests/oap): the server-starter version
# pinned in tests/oap/pom.xml, its runtime classpath copied by Maven to build/oap/<version>/lib.
# The configuration is the project's own (tests/oap/config). Included from the top Makefile.

OAP_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
OAP_ROOT := $(abspath $(OAP_MK_DIR)/../..)
OAP_VERSION := $(shell sed -n 's:.*<skywalking.version>\(.*\)</skywalking.version>.*:\1:p' $(OAP_MK_DIR)/pom.xml)
OAP_LIB := $(OAP_ROOT)/build/oap/$(OAP_VERSION)/lib

.PHONY: oap-build

oap-build: $(OAP_LIB)/.complete ## Fetch the SkyWalking OAP the analysis tests run (Maven Central, pinned in tests/oap/pom.xml) into build/oap/<version>/lib

# Rebuilt only when the pin changes. -B: batch mode; the jars land in ~/.m2 once.
$(OAP_LIB)/.complete: $(OAP_MK_DIR)/pom.xml
	command -v mvn >/dev/null || { echo "mvn not found: install Maven and OpenJDK 17 (make setup)"; exit 1; }
	rm -rf $(OAP_LIB).tmp && mkdir -p $(OAP_LIB).tmp
	mvn -q -B -f $(OAP_MK_DIR)/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(OAP_LIB).tmp
	rm -rf $(OAP_LIB) && mv $(OAP_LIB).tmp $(OAP_LIB) && touch $@
